using System.Buffers;

namespace Dtrain.Data.Datasets;

/// <summary>A stretch of a language model's token stream as text (a pooled buffer), and whether it belongs to the validation split.</summary>
internal sealed class TextChunk(char[] buffer, int length, bool validation)
{
    public char[] Buffer { get; } = buffer;
    public int Length { get; } = length;
    public bool Validation { get; } = validation;
    public ReadOnlySpan<char> Text => Buffer.AsSpan(0, Length);

    public void Return() => ArrayPool<char>.Shared.Return(Buffer);
}
