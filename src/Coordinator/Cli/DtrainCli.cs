using System.CommandLine;

namespace Dtrain.Cli;

/// <summary>The `dtrain` command line: one verb per file, composed here.</summary>
public static class DtrainCli
{
    public static RootCommand Build()
    {
        var root = new RootCommand(
            "dtrain: train LSTM/GRU language models and text classifiers with TorchSharp, locally or on a cluster.\n" +
            "Start with: dtrain train examples/moby-char-lstm.json");
        root.Subcommands.Add(TrainCommand.Create());
        root.Subcommands.Add(ValidateCommand.Create());
        root.Subcommands.Add(EvalCommand.Create());
        root.Subcommands.Add(PredictCommand.Create());
        root.Subcommands.Add(GenerateCommand.Create());
        return root;
    }
}
