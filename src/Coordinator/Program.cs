using Dtrain.Cli;

var parsed = DtrainCli.Build().Parse(args);
CliTls.Capture(parsed);
return parsed.Invoke();
