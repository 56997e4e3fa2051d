using System.Globalization;

namespace Dtrain.Bench;

/// <summary>Command-line checks shared by the suites: --help prints the usage, an unknown option is an error naming it (never silently ignored).</summary>
internal static class BenchArgs
{
    /// <summary>True when <paramref name="args"/> ask for help (the usage is then printed).</summary>
    public static bool Help(string[] args, string usage)
    {
        if (!args.Any(a => a is "--help" or "-h")) return false;
        Console.WriteLine($"usage: {usage}");
        return true;
    }

    /// <summary>Throws <see cref="ArgumentException"/> for any --option not in <paramref name="known"/>, or one given without its value.</summary>
    public static void CheckOptions(string[] args, string usage, params string[] known)
    {
        for (var i = 0; i < args.Length; i++)
        {
            if (!args[i].StartsWith("--", StringComparison.Ordinal)) continue;
            if (!known.Contains(args[i])) throw new ArgumentException($"unknown option {args[i]} (usage: {usage})");
            if (i + 1 >= args.Length || args[i + 1].StartsWith("--", StringComparison.Ordinal)) throw new ArgumentException($"option {args[i]} needs a value (usage: {usage})");
            i++;
        }
    }

    /// <summary>The arguments that are neither an --option nor an option's value, in order (call after <see cref="CheckOptions"/>).</summary>
    public static IReadOnlyList<string> Positional(string[] args)
    {
        var positional = new List<string>();
        for (var i = 0; i < args.Length; i++)
        {
            if (args[i].StartsWith("--", StringComparison.Ordinal)) i++;
            else positional.Add(args[i]);
        }
        return positional;
    }

    /// <summary>The value after <paramref name="name"/> in <paramref name="args"/>, or null when the option is absent (or last).</summary>
    public static string? Option(string[] args, string name) => Array.IndexOf(args, name) is >= 0 and var i && i + 1 < args.Length ? args[i + 1] : null;

    /// <summary>
    /// <paramref name="text"/> (the value of <paramref name="name"/>) as a comma-separated list of whole numbers in
    /// [<paramref name="min"/>, <paramref name="max"/>]; anything else is an <see cref="ArgumentException"/> naming the option and the value.
    /// </summary>
    public static int[] Numbers(string name, string text, int min, int max, string? usage = null) =>
        [.. text.Split(',').Select(v => Number(name, v, min, max, usage))];

    /// <summary>
    /// <paramref name="text"/> (the value of <paramref name="name"/>) as one whole number in [<paramref name="min"/>,
    /// <paramref name="max"/>]; anything else is an <see cref="ArgumentException"/> naming the option and the value.
    /// </summary>
    public static int Number(string name, string text, int min, int max, string? usage = null) =>
        int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n >= min && n <= max ? n
            : throw new ArgumentException($"{name}: \"{text}\" is not a whole number from {min} to {max}{(usage is null ? "" : $" (usage: {usage})")}");

    /// <summary>The median of <paramref name="values"/> (of an even count, the mean of the two middle ones; NaN when empty), as every suite reports its rounds.</summary>
    public static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToList();
        if (sorted.Count == 0) return double.NaN;
        var upper = sorted[sorted.Count / 2];
        return sorted.Count % 2 == 0 ? (upper + sorted[(sorted.Count / 2) - 1]) / 2 : upper;
    }
}
