using Dtrain.Protos.Jobs;
using Grpc.Core;

namespace Dtrain.Server;

/// <summary>Data files uploaded in chunks before a submission, kept under DATA_DIR/uploads until a job claims them.</summary>
public sealed class UploadStore(CoordinatorOptions options)
{
    private string Dir => Path.GetFullPath(Path.Combine(options.DataDir, "uploads"));

    public async Task<UploadReply> ReceiveAsync(IAsyncStreamReader<FileChunk> chunks, CancellationToken cancel)
    {
        Directory.CreateDirectory(Dir);
        var id = Guid.NewGuid().ToString("N");
        var part = Path.Combine(Dir, id + ".part");
        long total = -1, received = 0;
        try
        {
            await using (var file = File.Create(part))
            {
                await foreach (var chunk in chunks.ReadAllAsync(cancel).ConfigureAwait(false))
                {
                    if (total < 0)
                    {
                        total = chunk.TotalBytes;
                        if (total < 0 || total > options.MaxUploadBytes)
                            throw new RpcException(new Status(StatusCode.ResourceExhausted, $"upload \"{chunk.Name}\" of {total} bytes exceeds Coordinator:MaxUploadBytes = {options.MaxUploadBytes}"));
                    }
                    received += chunk.Data.Length;
                    if (received > total)
                        throw new RpcException(new Status(StatusCode.InvalidArgument, $"upload sent more than the announced {total} bytes"));
                    chunk.Data.WriteTo(file);
                }
                await file.FlushAsync(cancel).ConfigureAwait(false);
            }
            if (total < 0) throw new RpcException(new Status(StatusCode.InvalidArgument, "empty upload: the first chunk must carry the file's name and total_bytes"));
            if (received != total) throw new RpcException(new Status(StatusCode.InvalidArgument, $"upload ended after {received} of {total} bytes"));
            File.Move(part, Path.Combine(Dir, id));
            return new UploadReply { FileId = id, Bytes = received };
        }
        catch
        {
            File.Delete(part);
            throw;
        }
    }

    /// <summary>The stored file of an upload handle; anything but a handle this store issued is refused.</summary>
    public string PathOf(string fileId, string field)
    {
        if (fileId.Length != 32 || !fileId.All(char.IsAsciiHexDigitLower))
            throw new ArgumentException($"{field}: \"{fileId}\" is not an upload handle");
        var path = Path.Combine(Dir, fileId);
        return File.Exists(path) ? path : throw new ArgumentException($"{field}: upload \"{fileId}\" not found on the coordinator (expired or never completed)");
    }
}
