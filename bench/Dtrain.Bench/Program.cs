using Dtrain.Bench;
using static TorchSharp.torch;

var threads = args.Length > 1 ? int.Parse(args[1]) : 2;
set_num_threads(threads);
switch (args.FirstOrDefault() ?? "speed")
{
    case "speed":
        for (var round = 0; round < 2; round++)
        {
            var plain = PlainCharLm.SecondsPerStep(96, 64, 256, 2, 32, 64, 5, 30);
            var engine = EngineLoop.SecondsPerStep(96, 64, 256, 2, 32, 64, 5, 30);
            Console.WriteLine($"W1 threads={threads} plain {plain * 1e3:F1} ms/step ({32 / plain:F1} samples/s)  engine {engine * 1e3:F1} ms/step ({32 / engine:F1} samples/s)  engine/plain throughput {plain / engine:F3}");
        }
        break;
}
