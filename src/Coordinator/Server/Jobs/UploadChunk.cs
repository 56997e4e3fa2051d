namespace Dtrain.Server;

/// <summary>
/// A piece of an uploaded file as it arrives: the first names the file and its total size (the later ones may repeat
/// them; they are not read), each carries the next bytes.
/// </summary>
/// <param name="Name">The file's name on the client (for messages only).</param>
/// <param name="TotalBytes">The file's size, announced by the first chunk.</param>
/// <param name="Data">The next bytes of the file.</param>
public sealed record UploadChunk(string Name, long TotalBytes, ReadOnlyMemory<byte> Data);

/// <summary>An upload received, on disk and recorded: its handle (what a spec names) and its size.</summary>
public sealed record UploadedFile(string FileId, long Bytes);
