using Dtrain.Specs;

namespace Dtrain.Data.Datasets;

/// <summary>
/// The error and over-length policies for the records of one source file, for the in-memory readers (through
/// <see cref="RecordCollector"/>) and dtrain prepare's <see cref="SourceReader"/> alike (on_error fail/skip, overlength
/// truncate/skip/error at max_length characters, never splitting a surrogate pair, "no records" for a file that yields
/// none), one record at a time.
/// </summary>
internal sealed class RecordPolicy(string file, ReadOptions options, DataReportBuilder report)
{
    int kept, skipped;

    /// <summary>A malformed record: fatal, or skipped and counted under on_error = "skip".</summary>
    public void Bad(long line, string problem)
    {
        if (options.OnError != ErrorPolicies.Skip) throw new DataFormatException(file, Line(line), problem);
        skipped++;
        report.Skip(file, Line(line), problem);
    }

    /// <summary>The record's text as kept (truncated when over-long), or null when it is skipped.</summary>
    public string? Add(string text, long line)
    {
        if (options.MaxLength > 0 && text.Length > options.MaxLength)
        {
            var problem = $"record is {text.Length} characters long, more than max_length {options.MaxLength}";
            switch (options.Overlength)
            {
                case OverlengthPolicies.Error:
                    throw new DataFormatException(file, Line(line), problem);
                case OverlengthPolicies.Skip:
                    skipped++;
                    report.Skip(file, Line(line), problem);
                    return null;
                default:
                    var cut = options.MaxLength;
                    if (char.IsHighSurrogate(text[cut - 1]) && char.IsLowSurrogate(text[cut])) cut--;
                    text = text[..cut];
                    report.CountTruncated();
                    break;
            }
        }
        kept++;
        report.CountRead();
        return text;
    }

    /// <summary>A whole-file record (plain text) kept.</summary>
    public void CountWhole()
    {
        kept++;
        report.CountRead();
    }

    public void Finish()
    {
        if (kept == 0) throw new DataFormatException(file, 0, skipped > 0 ? $"no records ({skipped} skipped as malformed or over-long)" : "no records");
    }

    internal static int Line(long line) => (int)Math.Min(int.MaxValue, line);
}
