using System.CommandLine;

namespace Dtrain.Cli;

/// <summary>The `dtrain` command line: one verb per file, composed here.</summary>
public static class DtrainCli
{
    /// <summary>Runs the command line; exit status 2 for arguments that do not parse (see <see cref="CliParsing"/>).</summary>
    public static int Run(string[] args) => CliParsing.Run(Build(), args);

    public static RootCommand Build()
    {
        var root = new RootCommand(
            "dtrain: train LSTM/GRU language models and text classifiers with TorchSharp, locally or on a cluster.\n" +
            "Start with: dtrain train examples/quickstart.json, or on a local cluster: dtrain cluster run examples/quickstart.json --workers 2");
        root.Options.Add(Remote.CoordinatorOption);
        root.Options.Add(Credentials.TokenFileOption);
        root.Options.Add(Credentials.InsecureOption);
        CliTls.AddTo(root);
        root.Subcommands.Add(TrainCommand.Create());
        root.Subcommands.Add(ValidateCommand.Create());
        root.Subcommands.Add(PrepareCommand.Create());
        root.Subcommands.Add(EvalCommand.Create());
        root.Subcommands.Add(PredictCommand.Create());
        root.Subcommands.Add(GenerateCommand.Create());
        root.Subcommands.Add(ExportCommand.Create());
        root.Subcommands.Add(ServeModelCommand.Create());
        root.Subcommands.Add(ServeCommand.Create());
        root.Subcommands.Add(ServeCommand.CreateWorker());
        foreach (var c in JobCommands.Create()) root.Subcommands.Add(c);
        root.Subcommands.Add(ClusterCommand.Create());
        root.Subcommands.Add(PlanCommand.Create());
        root.Subcommands.Add(HealthCommand.Create());
        root.Subcommands.Add(TokensCommand.Create());
        root.Subcommands.Add(CertsCommand.Create());
        CliParsing.UseClearNumberErrors(root);
        return root;
    }
}
