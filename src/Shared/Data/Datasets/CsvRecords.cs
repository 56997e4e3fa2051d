namespace Dtrain.Data.Datasets;

/// <summary>
/// A CSV file's records as both CSV readers take them (<see cref="CsvReader"/> in memory, <see cref="SourceReader"/> as a
/// stream): the header row names the columns and must hold the text field (and the label field, when labels are read);
/// a record is malformed when the parser found a problem in it, its field count is not the header's, or its text or label
/// field is empty. "file is empty" for a file with nothing but whitespace.
/// </summary>
internal sealed class CsvRecords
{
    readonly string path;
    readonly CsvStreamParser parser;
    readonly ReadOptions options;
    readonly List<string> header = [];
    readonly List<string> fields = [];
    readonly int textColumn, labelColumn;
    long count;

    public CsvRecords(string path, CsvStreamParser parser, ReadOptions options)
    {
        this.path = path;
        this.parser = parser;
        this.options = options;
        if (!parser.Next(header, out var headerLine, out _)) throw new DataFormatException(path, 0, "file is empty");
        textColumn = Column(headerLine, options.TextField);
        labelColumn = options.LabelField is { } lf ? Column(headerLine, lf) : -1;
    }

    /// <summary>
    /// The next record's start line with its text and label, or with the <paramref name="problem"/> that makes it
    /// malformed; false after the last record.
    /// </summary>
    public bool Next(CancellationToken cancel, out long line, out string text, out string? label, out string? problem)
    {
        text = "";
        label = null;
        if (!parser.Next(fields, out line, out problem))
        {
            if (!parser.SawContent) throw new DataFormatException(path, 0, "file is empty");
            return false;
        }
        if (++count % 4096 == 0) cancel.ThrowIfCancellationRequested();
        if (problem is not null) return true;
        if (fields.Count != header.Count)
        {
            problem = $"expected {header.Count} fields as in the header, found {fields.Count}";
            return true;
        }
        text = fields[textColumn];
        if (string.IsNullOrWhiteSpace(text))
        {
            problem = $"field '{options.TextField}' is empty";
            return true;
        }
        if (labelColumn >= 0)
        {
            label = fields[labelColumn];
            if (string.IsNullOrWhiteSpace(label)) problem = $"field '{options.LabelField}' is empty";
        }
        return true;
    }

    int Column(long headerLine, string name)
    {
        var index = header.IndexOf(name);
        if (index >= 0) return index;
        parser.Drain();
        if (!parser.SawContent) throw new DataFormatException(path, 0, "file is empty");
        throw new DataFormatException(path, RecordPolicy.Line(headerLine), options.QuoteContent
            ? $"no column '{name}' in header; columns are: {string.Join(", ", header)}"
            : $"no column '{name}' in header (it has {header.Count} columns)");
    }
}
