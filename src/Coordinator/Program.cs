using Dtrain.Cli;

return DtrainCli.Build().Parse(args).Invoke();
