namespace Dtrain.Data;

/// <summary>Accumulates a <see cref="DataReport"/> while files are read: records kept, skipped (with a few examples) and truncated.</summary>
public sealed class DataReportBuilder
{
    public const int MaxExamples = 5;
    readonly List<string> examples = [];

    /// <summary>Records read and kept (truncated ones included).</summary>
    public int Read { get; private set; }
    /// <summary>Records dropped: malformed (on_error = skip) or over-long (overlength = skip).</summary>
    public int Skipped { get; private set; }
    public int Truncated { get; private set; }

    public void CountRead(int count = 1) => Read += count;
    public void CountTruncated() => Truncated++;

    public void Skip(string file, int line, string problem)
    {
        Skipped++;
        if (examples.Count < MaxExamples) examples.Add(line > 0 ? $"{file}:{line}: {problem}" : $"{file}: {problem}");
    }

    public DataReport ToReport() => new(Read, Skipped, Truncated, [.. examples]);
}
