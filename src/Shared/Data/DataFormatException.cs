namespace Dtrain.Data;

/// <summary>Bad input data, naming the file and (1-based) line where it was found.</summary>
public sealed class DataFormatException(string file, int line, string problem)
    : Exception(line > 0 ? $"{file}:{line}: {problem}" : $"{file}: {problem}")
{
    public string File { get; } = file;
    /// <summary>1-based line number, or 0 when the problem concerns the whole file.</summary>
    public int Line { get; } = line;
    public string Problem { get; } = problem;
}
