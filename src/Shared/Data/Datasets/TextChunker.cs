using System.Buffers;

namespace Dtrain.Data.Datasets;

/// <summary>
/// Joins a language model's records with "\n" (as the in-memory path joins them) and cuts the stream into chunks that
/// can be tokenized independently with the same result as the whole text: for the word tokenizer only after a
/// whitespace character, for the char tokenizer anywhere but inside a surrogate pair. A chunk ends exactly at the
/// train/validation cut (moved back one character so as not to split a surrogate pair, as the in-memory split does).
/// The cut points depend only on the text, never on the thread count.
/// </summary>
internal sealed class TextChunker(bool wordBoundaries, int chunkChars = TextChunker.DefaultChunkChars)
{
    public const int DefaultChunkChars = 1 << 20;
    /// <summary>The word tokenizer needs a whitespace character at least this often.</summary>
    public const int MaxChunkChars = 1 << 28;

    static readonly System.Buffers.SearchValues<char> Separators = System.Buffers.SearchValues.Create(" \n\t\r");

    char[] buffer = [];
    int length;
    long position;
    bool validation;
    readonly List<TextChunk> ready = [];
    string file = "";
    long line;

    /// <summary>The chunks of <paramref name="pieces"/> joined; from character <paramref name="cut"/> on (-1: none) they are validation, as are all when <paramref name="allValidation"/>.</summary>
    public IEnumerable<TextChunk> Chunks(IEnumerable<TextPiece> pieces, long cut, bool allValidation)
    {
        buffer = ArrayPool<char>.Shared.Rent(chunkChars);
        length = 0;
        position = 0;
        validation = allValidation;
        var joiner = false;
        foreach (var piece in pieces)
        {
            file = piece.File;
            line = piece.Line;
            if (joiner)
            {
                Append("\n", ref cut);
                joiner = false;
            }
            Append(piece.Text.Span, ref cut);
            joiner = piece.EndOfRecord;
            foreach (var c in ready) yield return c;
            ready.Clear();
        }
        if (length > 0) ready.Add(new TextChunk(buffer, length, validation));
        else ArrayPool<char>.Shared.Return(buffer);
        buffer = [];
        foreach (var c in ready) yield return c;
        ready.Clear();
    }

    /// <summary>The number of characters seen so far (the joined stream's length once the pieces are done).</summary>
    public long Position => position;

    void Append(ReadOnlySpan<char> text, ref long cut)
    {
        if (!validation && cut >= 0 && position + text.Length > cut)
        {
            var take = (int)(cut - position);
            if (take > 0 && take < text.Length && char.IsHighSurrogate(text[take - 1]) && char.IsLowSurrogate(text[take]))
            {
                take--;
                cut--;
            }
            if (cut <= 0) throw new DataFormatException(file, 0, "the text is too short to split into training and validation");
            AppendRaw(text[..take]);
            if (length > 0)
            {
                ready.Add(new TextChunk(buffer, length, validation));
                buffer = ArrayPool<char>.Shared.Rent(chunkChars);
                length = 0;
            }
            validation = true;
            text = text[take..];
        }
        AppendRaw(text);
    }

    void AppendRaw(ReadOnlySpan<char> text)
    {
        while (!text.IsEmpty)
        {
            var n = Math.Min(buffer.Length - length, text.Length);
            text[..n].CopyTo(buffer.AsSpan(length));
            length += n;
            position += n;
            text = text[n..];
            if (length == buffer.Length) Spill();
        }
    }

    /// <summary>The buffer is full: emit all of it up to the last safe cut, keep the rest.</summary>
    void Spill()
    {
        int at;
        if (!wordBoundaries) at = char.IsHighSurrogate(buffer[length - 1]) ? length - 1 : length;
        else at = buffer.AsSpan(0, length).LastIndexOfAny(Separators) + 1;
        if (at <= 0)
        {
            if (buffer.Length >= MaxChunkChars)
                throw new DataFormatException(file, RecordPolicy.Line(line), $"more than {MaxChunkChars:N0} characters without a space or line break: the word tokenizer cannot split such a text into pieces");
            var bigger = ArrayPool<char>.Shared.Rent(buffer.Length * 2);
            buffer.AsSpan(0, length).CopyTo(bigger);
            ArrayPool<char>.Shared.Return(buffer);
            buffer = bigger;
            return;
        }
        var next = ArrayPool<char>.Shared.Rent(Math.Max(chunkChars, 2 * (length - at)));
        buffer.AsSpan(at, length - at).CopyTo(next);
        ready.Add(new TextChunk(buffer, at, validation));
        length -= at;
        buffer = next;
    }
}
