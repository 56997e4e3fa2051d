namespace Dtrain.Data;

/// <summary>Plain text: the whole file is one record (line 1), with CRLF line ends normalised to LF (nothing else is changed).</summary>
public static class TextFileReader
{
    public static IReadOnlyList<TextRecord> Read(string path, ReadOptions options, DataReportBuilder report, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.LabelField is not null)
            throw new ArgumentException("plain text files have no labels; use jsonl or csv for classification", nameof(options));
        var text = DatasetReader.ReadAllText(path, options, cancel);
        DatasetReader.RequireContent(path, text);
        text = text.Replace("\r\n", "\n", StringComparison.Ordinal);
        var records = new RecordCollector(path, options, report);
        records.Add(text, null, 1);
        return records.Finish();
    }
}
