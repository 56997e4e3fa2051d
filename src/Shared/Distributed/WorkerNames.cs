using System.Text.RegularExpressions;

namespace Dtrain.Distributed;

/// <summary>
/// Worker ids and names live in separate namespaces: the coordinator hands out ids <c>w1</c>, <c>w2</c>, ... and an
/// operator's name (<c>dtrain worker --name</c>) may never take that form, so `dtrain workers drain w2` can only mean
/// the worker whose id is w2 — never one that merely calls itself "w2".
/// </summary>
public static partial class WorkerNames
{
    /// <summary>The id of the <paramref name="n"/>th registration with a coordinator.</summary>
    public static string Id(int n) => $"w{n}";

    /// <summary>Whether <paramref name="value"/> has the form of a worker id (w followed by digits).</summary>
    public static bool IsId(string value) => IdPattern().IsMatch(value);

    /// <summary>Null when <paramref name="name"/> is a valid worker name, else why not (for a message naming where it came from).</summary>
    public static string? Problem(string name)
    {
        if (!NamePattern().IsMatch(name))
            return $"worker name \"{name}\" must be 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit";
        if (IdPattern().IsMatch(name))
            return $"worker name \"{name}\" has the form of a worker id (w followed by digits), which the coordinator hands out; choose a name that is not, e.g. \"node-{name[1..]}\"";
        return null;
    }

    [GeneratedRegex("^[wW][0-9]+$")]
    private static partial Regex IdPattern();

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
    private static partial Regex NamePattern();
}
