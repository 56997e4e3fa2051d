namespace Dtrain.Server;

/// <summary>
/// Clients (the CLI, the dashboard, a job's watchers) never see where the coordinator keeps things: in text meant for
/// them, a path under its data directory is shown relative to it — a job's files as <c>job-0001/checkpoints/...</c>,
/// an upload as <c>uploads/...</c> — and a job's data files by the names their submitter gave them
/// (<see cref="JobRecord.AsSubmitted"/>). The coordinator's own log keeps the full paths.
/// </summary>
public static class ServerPaths
{
    /// <summary><paramref name="text"/> with every path under <paramref name="dataDir"/> made relative to it (jobs/ left out).</summary>
    public static string Hide(string text, string dataDir)
    {
        if (string.IsNullOrEmpty(text)) return text;
        var root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(dataDir));
        if (root.Length <= 1) return text;
        var sep = Path.DirectorySeparatorChar;
        return text
            .Replace(root + sep + "jobs" + sep, "", StringComparison.Ordinal)
            .Replace(root + sep, "", StringComparison.Ordinal)
            .Replace(root, "the coordinator's data directory", StringComparison.Ordinal);
    }
}

/// <summary>Hides the coordinator's data directory in the messages of refused calls (<see cref="Rpc.ServerInterceptor"/>).</summary>
public sealed class ServerPathFilter(CoordinatorOptions options) : Rpc.IClientMessageFilter
{
    public string Filter(string message) => ServerPaths.Hide(message, options.DataDir);
}
