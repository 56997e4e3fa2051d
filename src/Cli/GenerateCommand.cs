using System.CommandLine;
using Dtrain.Inference;

namespace Dtrain.Cli;

/// <summary>`dtrain generate CHECKPOINT --prompt "..."`: samples text from a language model.</summary>
public static class GenerateCommand
{
    public static Command Create()
    {
        var checkpoint = new Argument<string>("checkpoint") { Description = "A language-model checkpoint file (.dtck) or run directory." };
        var prompt = new Option<string>("--prompt", "-p") { Description = "Text to start from (unknown characters/words map to <unk>).", DefaultValueFactory = _ => "" };
        var length = new Option<int>("--length", "-n") { Description = "Tokens to generate (characters for a char model, words for a word model).", DefaultValueFactory = _ => 300 };
        var temperature = new Option<double>("--temperature", "-t") { Description = "Sampling temperature; 0 = always the most likely token.", DefaultValueFactory = _ => 0.8 };
        var topK = new Option<int>("--top-k", "-k") { Description = "Sample only among the k most likely tokens (0 = all).", DefaultValueFactory = _ => 0 };
        var seed = new Option<long>("--seed") { Description = "Random seed: the same seed gives the same text.", DefaultValueFactory = _ => 1 };
        var device = new Option<string>("--device") { Description = "cpu, cuda or cuda:N.", DefaultValueFactory = _ => "cpu" };
        var cmd = new Command("generate", "Generate text from a trained language model, with temperature and top-k sampling (never <pad> or <unk>).");
        cmd.Arguments.Add(checkpoint);
        foreach (var o in new Option[] { prompt, length, temperature, topK, seed, device }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            using var model = TrainedModel.Load(r.GetValue(checkpoint)!, r.GetValue(device)!, Console.Error.WriteLine);
            var text = TextGenerator.Generate(model, r.GetValue(prompt)!, r.GetValue(length), r.GetValue(temperature), r.GetValue(topK), r.GetValue(seed));
            Console.WriteLine(r.GetValue(prompt) + text);
            return CliErrors.Ok;
        }));
        return cmd;
    }
}
