using System.Text;

namespace Dtrain.Data;

/// <summary>
/// CSV as in RFC 4180: a header row naming the columns, comma-separated fields, quoted fields with "" for a quote
/// and line breaks allowed inside quotes, rows ending in CRLF or LF. Empty lines are ignored. A record's line
/// number is the line where it starts. An unterminated quote is always fatal (it swallows the rest of the file).
/// Without <see cref="ReadOptions.QuoteContent"/>, messages name the line and column but quote nothing from the file.
/// </summary>
public static class CsvReader
{
    public static IReadOnlyList<TextRecord> Read(string path, ReadOptions options, DataReportBuilder report, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        var text = DatasetReader.ReadAllText(path, options, cancel);
        DatasetReader.RequireContent(path, text);
        var parser = new Parser(path, text, options.QuoteContent);
        if (!parser.Next(out var header, out var headerLine, out _)) throw new DataFormatException(path, 0, "file is empty");
        var textColumn = Column(path, header, headerLine, options.TextField, options.QuoteContent);
        var labelColumn = options.LabelField is { } lf ? Column(path, header, headerLine, lf, options.QuoteContent) : -1;

        var records = new RecordCollector(path, options, report);
        var count = 0;
        while (parser.Next(out var fields, out var line, out var problem))
        {
            if (++count % 4096 == 0) cancel.ThrowIfCancellationRequested();
            if (problem is not null) { records.Bad(line, problem); continue; }
            if (fields.Count != header.Count)
            {
                records.Bad(line, $"expected {header.Count} fields as in the header, found {fields.Count}");
                continue;
            }
            var value = fields[textColumn];
            if (string.IsNullOrWhiteSpace(value)) { records.Bad(line, $"field '{options.TextField}' is empty"); continue; }
            string? label = null;
            if (labelColumn >= 0)
            {
                label = fields[labelColumn];
                if (string.IsNullOrWhiteSpace(label)) { records.Bad(line, $"field '{options.LabelField}' is empty"); continue; }
            }
            records.Add(value, label, line);
        }
        return records.Finish();
    }

    static int Column(string path, List<string> header, int headerLine, string name, bool quote)
    {
        var index = header.IndexOf(name);
        if (index < 0)
            throw new DataFormatException(path, headerLine, quote
                ? $"no column '{name}' in header; columns are: {string.Join(", ", header)}"
                : $"no column '{name}' in header (it has {header.Count} columns)");
        return index;
    }

    /// <summary>Splits the text into records; tracks line numbers across quoted line breaks.</summary>
    sealed class Parser(string file, string s, bool quote)
    {
        int pos;
        int line = 1;
        readonly StringBuilder field = new();

        /// <summary>The next record's fields and start line; <paramref name="problem"/> is set for a malformed record.</summary>
        public bool Next(out List<string> fields, out int startLine, out string? problem)
        {
            fields = [];
            problem = null;
            while (pos < s.Length && (s[pos] == '\n' || (s[pos] == '\r' && pos + 1 < s.Length && s[pos + 1] == '\n')))
            {
                pos += s[pos] == '\n' ? 1 : 2;
                this.line++;
            }
            startLine = this.line;
            if (pos >= s.Length) return false;

            while (true)
            {
                this.field.Clear();
                if (s[pos] == '"') problem ??= QuotedField(startLine);
                UnquotedRest();
                fields.Add(this.field.ToString());
                if (pos >= s.Length) return true;
                var c = s[pos];
                if (c == ',') { pos++; if (pos >= s.Length) { fields.Add(""); return true; } continue; }
                pos += c == '\r' ? 2 : 1; // "\r\n" or "\n"
                this.line++;
                return true;
            }
        }

        /// <summary>Reads a quoted field starting at the opening quote; returns a problem if text follows the closing quote.</summary>
        string? QuotedField(int startLine)
        {
            pos++;
            while (true)
            {
                if (pos >= s.Length)
                    throw new DataFormatException(file, startLine, "unterminated quoted field: the record starting on this line never closes its quote");
                var c = s[pos];
                if (c == '"')
                {
                    if (pos + 1 < s.Length && s[pos + 1] == '"') { this.field.Append('"'); pos += 2; continue; }
                    pos++;
                    break;
                }
                if (c == '\n') this.line++;
                this.field.Append(c);
                pos++;
            }
            if (AtFieldEnd()) return null;
            return quote
                ? $"unexpected character '{s[pos]}' after a closing quote (a quote inside a quoted field must be doubled)"
                : "unexpected character after a closing quote (a quote inside a quoted field must be doubled)";
        }

        /// <summary>Reads up to the end of the field; a quote here is taken literally.</summary>
        void UnquotedRest()
        {
            while (!AtFieldEnd())
            {
                this.field.Append(s[pos]);
                pos++;
            }
        }

        bool AtFieldEnd() =>
            pos >= s.Length || s[pos] == ',' || s[pos] == '\n' || (s[pos] == '\r' && pos + 1 < s.Length && s[pos + 1] == '\n');
    }
}
