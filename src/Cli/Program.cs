using Dtrain.Cli;

return DtrainCli.Run(args);
