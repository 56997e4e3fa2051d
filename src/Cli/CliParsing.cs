using System.CommandLine;
using System.CommandLine.Invocation;
using System.CommandLine.Parsing;
using System.Globalization;

namespace Dtrain.Cli;

/// <summary>
/// Command-line values that do not parse: one clear line per problem ("--seed: \"abc\" is not an integer") and exit
/// status 2 (bad input), instead of System.CommandLine's type names (System.Nullable`1[System.Int32]) and a help page.
/// </summary>
public static class CliParsing
{
    /// <summary>Parses and runs <paramref name="args"/>; a parse error prints its message(s) and returns <see cref="CliErrors.BadInput"/>.</summary>
    public static int Run(RootCommand root, string[] args)
    {
        var result = root.Parse(args);
        CliTls.Capture(result);
        if (result.Errors.Count > 0 && result.Action is ParseErrorAction)
        {
            foreach (var error in result.Errors) CliErrors.Error(error.Message);
            Console.Error.WriteLine($"see: {CommandPath(result.CommandResult.Command)} --help");
            return CliErrors.BadInput;
        }
        return result.Invoke();
    }

    /// <summary>Gives every integer and number option of <paramref name="command"/> and its subcommands a parser whose error says what the value must be.</summary>
    public static void UseClearNumberErrors(Command command)
    {
        foreach (var option in command.Options)
        {
            switch (option)
            {
                case Option<int> o: o.CustomParser = r => Parse(r, o.DefaultValueFactory, Int32) ?? default; break;
                case Option<int?> o: o.CustomParser = r => Parse(r, o.DefaultValueFactory, Int32); break;
                case Option<long> o: o.CustomParser = r => Parse(r, o.DefaultValueFactory, Int64) ?? default; break;
                case Option<long?> o: o.CustomParser = r => Parse(r, o.DefaultValueFactory, Int64); break;
                case Option<double> o: o.CustomParser = r => Parse(r, o.DefaultValueFactory, Number) ?? default; break;
                case Option<double?> o: o.CustomParser = r => Parse(r, o.DefaultValueFactory, Number); break;
            }
        }
        foreach (var sub in command.Subcommands) UseClearNumberErrors(sub);
    }

    private static T? Parse<T, TDefault>(ArgumentResult result, Func<ArgumentResult, TDefault>? defaultValue, Func<string, (T? Value, string? Problem)> parse)
        where T : struct
    {
        if (result.Tokens.Count == 0) return defaultValue is null ? null : (T?)(object?)defaultValue(result);
        var token = result.Tokens[^1].Value;
        var (value, problem) = parse(token);
        if (problem is null) return value;
        var name = result.Parent is OptionResult option ? option.Option.Name : "value";
        result.AddError($"{name}: \"{token}\" {problem}");
        return null;
    }

    private static (int?, string?) Int32(string s) =>
        int.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var v) ? (v, null)
        : System.Numerics.BigInteger.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out _) ? (null, $"is out of range: an integer from {int.MinValue} to {int.MaxValue} is expected")
        : (null, "is not an integer");

    private static (long?, string?) Int64(string s) =>
        long.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var v) ? (v, null)
        : System.Numerics.BigInteger.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out _) ? (null, $"is out of range: an integer from {long.MinValue} to {long.MaxValue} is expected")
        : (null, "is not an integer");

    private static (double?, string?) Number(string s) =>
        double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var v)
            ? double.IsFinite(v) ? (v, null) : (null, "is not a finite number")
            : (null, "is not a number");

    private static string CommandPath(Command command)
    {
        var names = new List<string>();
        for (Symbol? s = command; s is Command c; s = c.Parents.FirstOrDefault())
            names.Insert(0, c is RootCommand ? "dtrain" : c.Name);
        return string.Join(' ', names);
    }
}
