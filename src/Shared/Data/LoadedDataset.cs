namespace Dtrain.Data;

/// <summary>The train and validation splits of a job's data, plus what was dropped on the way.</summary>
public sealed record LoadedDataset(IReadOnlyList<TextRecord> Train, IReadOnlyList<TextRecord> Validation, DataReport Report);

/// <summary>What reading the data did besides returning records: counts of skipped or truncated records, with examples.</summary>
public sealed record DataReport(int Read, int Skipped, int Truncated, IReadOnlyList<string> SkippedExamples)
{
    public static readonly DataReport Empty = new(0, 0, 0, []);
}
