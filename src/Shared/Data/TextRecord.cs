namespace Dtrain.Data;

/// <summary>One example as read from a file: its text, its label (classification) and where it came from.</summary>
public sealed record TextRecord(string Text, string? Label, string File, int Line);
