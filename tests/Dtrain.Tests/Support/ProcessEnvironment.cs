namespace Dtrain.Tests.Support;

/// <summary>
/// Sets environment variables of the test process (null removes one) for an in-process coordinator and workers, and
/// restores their previous values when disposed. Tests that use it run alone (their collection disables parallelism).
/// </summary>
internal sealed class ProcessEnvironment : IDisposable
{
    readonly Dictionary<string, string?> saved;

    ProcessEnvironment(IReadOnlyDictionary<string, string?> variables)
    {
        saved = variables.Keys.ToDictionary(k => k, Environment.GetEnvironmentVariable);
        foreach (var (k, v) in variables) Environment.SetEnvironmentVariable(k, v);
    }

    public static ProcessEnvironment Set(IReadOnlyDictionary<string, string?> variables) => new(variables);

    public void Dispose()
    {
        foreach (var (k, v) in saved) Environment.SetEnvironmentVariable(k, v);
    }
}
