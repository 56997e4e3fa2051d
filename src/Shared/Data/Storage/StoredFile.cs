namespace Dtrain.Data.Storage;

/// <summary>One file of a dataset store: its name relative to the store's root ('/' separators) and size in bytes.</summary>
public sealed record StoredFile(string Name, long Size);
