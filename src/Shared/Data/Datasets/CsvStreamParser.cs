using System.Buffers;
using System.Text;

namespace Dtrain.Data.Datasets;

/// <summary>
/// The RFC 4180 parser of both CSV readers (<see cref="CsvReader"/> over a file's text in memory, <see cref="SourceReader"/>
/// over a stream): records, fields, problems and line numbers (a record's line is where it starts; line breaks inside
/// quotes count), holding only the current record and a buffer of characters.
/// </summary>
internal sealed class CsvStreamParser(string file, CsvStreamParser.CharSource read, bool quote) : IDisposable
{
    /// <summary>Fills <c>destination</c> (at least 2 long) with the next characters; 0 at the end.</summary>
    public delegate int CharSource(Span<char> destination);

    /// <summary>Over a stream, decoded as strict UTF-8.</summary>
    public CsvStreamParser(string file, Utf8CharReader reader, bool quote) : this(file, reader.Read, quote) { }

    /// <summary>Over a file's whole text, already decoded.</summary>
    public CsvStreamParser(string file, string text, bool quote) : this(file, Chunks(text), quote) { }

    static CharSource Chunks(string text)
    {
        var at = 0;
        return destination =>
        {
            var n = Math.Min(destination.Length, text.Length - at);
            text.AsSpan(at, n).CopyTo(destination);
            at += n;
            return n;
        };
    }

    char[] buffer = ArrayPool<char>.Shared.Rent(1 << 16);
    int pos, length;
    bool eof;
    long line = 1;
    readonly StringBuilder field = new();

    /// <summary>Whether a character other than whitespace has been read so far.</summary>
    public bool SawContent { get; private set; }

    int Peek(int k = 0)
    {
        while (pos + k >= length && !eof) Refill();
        return pos + k < length ? buffer[pos + k] : -1;
    }

    void Refill()
    {
        buffer.AsSpan(pos, length - pos).CopyTo(buffer);
        length -= pos;
        pos = 0;
        var n = read(buffer.AsSpan(length));
        if (n == 0) eof = true;
        if (!SawContent && !buffer.AsSpan(length, n).IsWhiteSpace()) SawContent = true;
        length += n;
    }

    /// <summary>Reads the rest of the input (to learn whether it is all whitespace).</summary>
    public void Drain()
    {
        while (!eof)
        {
            pos = length;
            Refill();
        }
    }

    /// <summary>The next record's fields and start line; <paramref name="problem"/> is set for a malformed record.</summary>
    public bool Next(List<string> fields, out long startLine, out string? problem)
    {
        fields.Clear();
        problem = null;
        while (Peek() == '\n' || (Peek() == '\r' && Peek(1) == '\n'))
        {
            pos += Peek() == '\n' ? 1 : 2;
            line++;
        }
        startLine = line;
        if (Peek() < 0) return false;
        while (true)
        {
            field.Clear();
            if (Peek() == '"') problem ??= QuotedField(startLine);
            UnquotedRest();
            fields.Add(field.ToString());
            var c = Peek();
            if (c < 0) return true;
            if (c == ',') { pos++; if (Peek() < 0) { fields.Add(""); return true; } continue; }
            pos += c == '\r' ? 2 : 1;
            line++;
            return true;
        }
    }

    string? QuotedField(long startLine)
    {
        pos++;
        while (true)
        {
            var c = Peek();
            if (c < 0)
                throw new DataFormatException(file, RecordPolicy.Line(startLine), "unterminated quoted field: the record starting on this line never closes its quote");
            if (c == '"')
            {
                if (Peek(1) == '"') { field.Append('"'); pos += 2; continue; }
                pos++;
                break;
            }
            if (c == '\n') line++;
            field.Append((char)c);
            pos++;
        }
        if (AtFieldEnd()) return null;
        return quote
            ? $"unexpected character '{(char)Peek()}' after a closing quote (a quote inside a quoted field must be doubled)"
            : "unexpected character after a closing quote (a quote inside a quoted field must be doubled)";
    }

    void UnquotedRest()
    {
        while (!AtFieldEnd())
        {
            field.Append((char)Peek());
            pos++;
        }
    }

    bool AtFieldEnd()
    {
        var c = Peek();
        return c < 0 || c == ',' || c == '\n' || (c == '\r' && Peek(1) == '\n');
    }

    public void Dispose()
    {
        if (buffer.Length == 0) return;
        ArrayPool<char>.Shared.Return(buffer);
        buffer = [];
    }
}
