namespace Dtrain.Rpc;

/// <summary>
/// What of an unexpected error's text may leave the process. libtorch's errors (TorchSharp's ExternalException) carry
/// its message on the first line and then "Exception raised from ... at /pytorch/..." and a native stack trace with
/// this machine's library paths: that goes to the log, never to a client, a job's state or the dashboard.
/// </summary>
public static class ErrorText
{
    /// <summary>The first line of <paramref name="text"/> that is not blank, trimmed; "" when there is none.</summary>
    public static string FirstLine(string? text)
    {
        foreach (var line in (text ?? "").Split('\n'))
            if (line.Trim() is { Length: > 0 } first) return first;
        return "";
    }
}
