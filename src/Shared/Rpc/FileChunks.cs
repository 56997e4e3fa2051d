using Dtrain.Protos.Jobs;
using Google.Protobuf;

namespace Dtrain.Rpc;

/// <summary>A file as a sequence of <see cref="FileChunk"/> messages: the first names it and gives its size; an empty file is one empty chunk.</summary>
public static class FileChunks
{
    public static IEnumerable<FileChunk> Read(string path, int chunkBytes)
    {
        using var file = File.OpenRead(path);
        var buffer = new byte[chunkBytes];
        var first = true;
        int n;
        while ((n = file.Read(buffer)) > 0 || first)
        {
            var chunk = new FileChunk { Data = ByteString.CopyFrom(buffer, 0, n) };
            if (first) { chunk.Name = Path.GetFileName(path); chunk.TotalBytes = file.Length; first = false; }
            yield return chunk;
            if (n == 0) break;
        }
    }
}
