using Dtrain.Checkpoints;
using Dtrain.Data;
using Dtrain.Specs;

namespace Dtrain.Cli;

/// <summary>Exit codes and the one place that turns user-caused exceptions into clear messages.</summary>
public static class CliErrors
{
    public const int Ok = 0, Failed = 1, BadInput = 2, Interrupted = 130, Terminated = 143;

    /// <summary>Runs <paramref name="action"/>, printing bad-input errors (spec, data, checkpoint, arguments) without a stack trace.</summary>
    public static int Guard(Func<int> action)
    {
        try
        {
            return action();
        }
        catch (Exception e) when (e is SpecException or DataFormatException or Data.Datasets.DatasetException or CorruptCheckpointException or InvalidDataException or ArgumentException or FileNotFoundException or DirectoryNotFoundException)
        {
            // An ArgumentException's Message ends in " (Parameter 'name')", a .NET name the user never typed.
            Error(e is ArgumentException { ParamName: { } name } ? e.Message.Replace($" (Parameter '{name}')", "", StringComparison.Ordinal) : e.Message);
            return BadInput;
        }
        catch (Training.TrainingDivergedException e)
        {
            Error(e.Message);
            return Failed;
        }
        catch (Exception e)
        {
            Error($"{e.GetType().Name}: {e.Message}");
            if (Environment.GetEnvironmentVariable("DTRAIN_DEBUG") == "1") Console.Error.WriteLine(e);
            return Failed;
        }
    }

    public static void Error(string message) => Console.Error.WriteLine($"error: {message}");
}
