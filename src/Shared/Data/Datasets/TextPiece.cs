namespace Dtrain.Data.Datasets;

/// <summary>
/// A piece of a source's records as read: part of a record's text (a plain text file is one record read in pieces) or
/// a whole record (JSONL, CSV) with its label. <see cref="Text"/> is only valid until the next piece is read.
/// </summary>
internal readonly record struct TextPiece(ReadOnlyMemory<char> Text, bool EndOfRecord, string? Label, string File, long Line);
