using static TorchSharp.torch;
var x = randn(3, 4);
var lstm = TorchSharp.torch.nn.LSTM(4, 8);
Console.WriteLine($"torch ok {x.shape[0]} {lstm.parameters().Count()}");
