using Dtrain.Data.Datasets;

namespace Dtrain.Data;

/// <summary>
/// CSV as in RFC 4180: a header row naming the columns, comma-separated fields, quoted fields with "" for a quote
/// and line breaks allowed inside quotes, rows ending in CRLF or LF. Empty lines are ignored. A record's line
/// number is the line where it starts. An unterminated quote is always fatal (it swallows the rest of the file).
/// Without <see cref="ReadOptions.QuoteContent"/>, messages name the line and column but quote nothing from the file.
/// Parsed by <see cref="CsvStreamParser"/> and checked by <see cref="CsvRecords"/>, as <c>dtrain prepare</c> reads CSV.
/// </summary>
public static class CsvReader
{
    public static IReadOnlyList<TextRecord> Read(string path, ReadOptions options, DataReportBuilder report, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        var text = DatasetReader.ReadAllText(path, options, cancel);
        DatasetReader.RequireContent(path, text);
        using var parser = new CsvStreamParser(path, text, options.QuoteContent);
        var csv = new CsvRecords(path, parser, options);
        var records = new RecordCollector(path, options, report);
        while (csv.Next(cancel, out var line, out var value, out var label, out var problem))
        {
            if (problem is not null) records.Bad(RecordPolicy.Line(line), problem);
            else records.Add(value, label, RecordPolicy.Line(line));
        }
        return records.Finish();
    }
}
