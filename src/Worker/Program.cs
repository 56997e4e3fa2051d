using Dtrain.Worker;

try
{
    return await WorkerHost.RunAsync(WorkerHost.ReadOptions(args));
}
catch (ArgumentException e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}
