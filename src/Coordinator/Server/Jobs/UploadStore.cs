using Dtrain.Checkpoints;
using System.Collections.Concurrent;
using System.Globalization;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>
/// Data files uploaded in chunks before a submission, kept under DATA_DIR/uploads until a job claims them. Each client
/// (as the Jobs service names it, by <see cref="ICallerIdentity"/>: its token's user, else its certificate, else its address) may have at most <see cref="CoordinatorOptions.MaxPendingUploads"/> pending uploads
/// totalling <see cref="CoordinatorOptions.MaxPendingUploadBytes"/> (an upload in progress counts at its announced
/// size); an upload no job claimed within <see cref="CoordinatorOptions.UploadTtlMinutes"/> of completing is deleted by
/// a sweep that runs on the coordinator's clock. A completed upload is on disk (file fsynced, renamed, directory fsynced)
/// and indexed in the job store (<see cref="JobStore"/>: owner, size, completion time) before the client gets its
/// handle, so after a restart — <c>kill -9</c> included — it is still pending for the same client, with the same TTL.
/// </summary>
public sealed class UploadStore : IDisposable
{
    private sealed class Entry(string owner, long bytes)
    {
        public string Owner { get; } = owner;
        public long Bytes { get; } = bytes;
        /// <summary>When the upload completed; null while it is in progress.</summary>
        public DateTimeOffset? Completed { get; set; }
    }

    private readonly CoordinatorOptions options;
    private readonly JobStore store;
    private readonly TimeProvider clock;
    private readonly ILogger<UploadStore> log;
    private readonly ConcurrentDictionary<string, Entry> entries = new();
    private readonly Lock quota = new();
    private readonly ITimer sweeper;

    public UploadStore(CoordinatorOptions options, JobStore store, TimeProvider clock, ILogger<UploadStore> log)
    {
        this.options = options;
        this.store = store;
        this.clock = clock;
        this.log = log;
        Adopt();
        sweeper = clock.CreateTimer(_ => Sweep(), null, SweepInterval, SweepInterval);
    }

    private string Dir => Path.GetFullPath(Path.Combine(options.DataDir, "uploads"));

    private TimeSpan Ttl => TimeSpan.FromMinutes(options.UploadTtlMinutes);

    /// <summary>How often expired uploads are looked for: a tenth of the TTL, between 1 s and 1 min.</summary>
    private TimeSpan SweepInterval => TimeSpan.FromTicks(Math.Clamp(Ttl.Ticks / 10, TimeSpan.TicksPerSecond, TimeSpan.TicksPerMinute));

    /// <summary>
    /// Receives a file of <paramref name="owner"/> (counted against its quota) and records it; refuses it
    /// (<see cref="RefusedException"/>) when it goes over a limit or its chunks do not add up to the announced size.
    /// </summary>
    public async Task<UploadedFile> ReceiveAsync(IAsyncEnumerable<UploadChunk> chunks, string owner, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(chunks);
        PrivateFiles.CreateDirectory(Dir);
        var id = Guid.NewGuid().ToString("N");
        var part = Path.Combine(Dir, id + ".part");
        long total = -1, received = 0;
        var name = "";
        try
        {
            await using (var file = PrivateFiles.Create(part))
            {
                await foreach (var chunk in chunks.WithCancellation(cancel).ConfigureAwait(false))
                {
                    if (total < 0)
                    {
                        total = chunk.TotalBytes;
                        name = chunk.Name;
                        if (total < 0 || total > options.UploadLimit)
                            throw new QuotaExceededException($"upload \"{chunk.Name}\" of {total} bytes exceeds Coordinator:MaxUploadBytes = {options.UploadLimit}");
                        Reserve(id, owner, total, chunk.Name);
                    }
                    received += chunk.Data.Length;
                    if (received > total)
                        throw new RefusedException(RefusalKind.InvalidArgument, $"upload sent more than the announced {total} bytes");
                    file.Write(chunk.Data.Span);
                }
                await file.FlushAsync(cancel).ConfigureAwait(false);
                file.Flush(flushToDisk: true);
            }
            if (total < 0) throw EmptyStream();
            if (received != total) throw new RefusedException(RefusalKind.InvalidArgument, $"upload ended after {received} of {total} bytes");
            var done = clock.GetUtcNow();
            File.Move(part, Path.Combine(Dir, id));
            DirectorySync.Fsync(Dir);
            if (!store.AddUpload(new StoredUpload(id, owner, received, done, name)))
            {
                File.Delete(Path.Combine(Dir, id));
                throw new RefusedException(RefusalKind.Unavailable, $"upload \"{name}\" received but the coordinator could not record it in its job store (see the coordinator's log); upload it again");
            }
            entries[id].Completed = done;
            return new UploadedFile(id, received);
        }
        catch
        {
            entries.TryRemove(id, out _);
            File.Delete(part);
            throw;
        }
    }

    /// <summary>
    /// The refusal of an upload whose request stream ended before its first message: nothing arrived, not even the file's
    /// name. dtrain's clients always send one (an empty file is one empty chunk), so their stream lost its messages on
    /// the way (<see cref="Rpc.FileUpload"/>: an HTTP/2 request replayed on a new connection without them); Unavailable
    /// with the <see cref="Rpc.FileUpload.EmptyStream"/> reason, on which they send the file again.
    /// </summary>
    private static RefusedException EmptyStream() => new(RefusalKind.Unavailable,
        "upload received no message: its request stream ended before the first chunk (the file's name and total_bytes), so nothing was uploaded. " +
        "A client that sent one lost it on the way (e.g. an HTTP/2 request replayed on a new connection without its messages); upload the file again")
    {
        Reason = Rpc.FileUpload.EmptyStream,
    };

    /// <summary>Counts an upload against its owner's quota, or refuses it (<see cref="QuotaExceededException"/>) naming the limit.</summary>
    private void Reserve(string id, string owner, long bytes, string name)
    {
        lock (quota)
        {
            var mine = entries.Values.Where(e => e.Owner == owner).ToList();
            var pendingBytes = mine.Sum(e => e.Bytes);
            var advice = $"submit the jobs that use them, or wait for unused ones to expire (Coordinator:UploadTtlMinutes = {options.UploadTtlMinutes.ToString(CultureInfo.InvariantCulture)})";
            if (mine.Count >= options.MaxPendingUploads)
                throw new QuotaExceededException(
                    $"upload \"{name}\" refused: {owner} already has {mine.Count} pending uploads, the most allowed (Coordinator:MaxPendingUploads = {options.MaxPendingUploads}); {advice}");
            if (pendingBytes + bytes > options.MaxPendingUploadBytes)
                throw new QuotaExceededException(
                    $"upload \"{name}\" of {bytes} bytes refused: {owner} already has {pendingBytes} bytes in pending uploads, and at most Coordinator:MaxPendingUploadBytes = {options.MaxPendingUploadBytes} are allowed; {advice}");
            entries[id] = new Entry(owner, bytes);
        }
    }

    /// <summary>Whether <paramref name="fileId"/> is a pending upload this store issued (completed, not expired).</summary>
    public bool IsPending(string fileId) =>
        entries.TryGetValue(fileId, out var e) && e.Completed is { } done && clock.GetUtcNow() - done < Ttl && File.Exists(Path.Combine(Dir, fileId));

    /// <summary>
    /// Moves the uploaded file to <paramref name="target"/> for a job (once: the upload is no longer pending and no longer
    /// counts against its owner's quota). Anything but a pending handle this store issued is refused, naming <paramref name="field"/>.
    /// </summary>
    public void Claim(string fileId, string field, string target)
    {
        Check(fileId, field);
        if (!entries.TryRemove(fileId, out _)) throw NotFound(fileId, field);
        File.Move(Path.Combine(Dir, fileId), target, overwrite: true);
        store.RemoveUpload(fileId);
    }

    /// <summary>Where a pending upload is, to read it before it is claimed (e.g. a checkpoint to resume from); refused like <see cref="Check"/>.</summary>
    public string PathOf(string fileId, string field)
    {
        Check(fileId, field);
        return Path.Combine(Dir, fileId);
    }

    /// <summary>Refuses, naming <paramref name="field"/>, anything but a pending handle this store issued.</summary>
    public void Check(string fileId, string field)
    {
        ArgumentNullException.ThrowIfNull(fileId);
        if (fileId.Length != 32 || !fileId.All(char.IsAsciiHexDigitLower))
            throw new ArgumentException($"{field}: \"{fileId}\" is not an upload handle");
        if (!IsPending(fileId)) throw NotFound(fileId, field);
    }

    private ArgumentException NotFound(string fileId, string field) =>
        new($"{field}: upload \"{fileId}\" not found on the coordinator (unused for Coordinator:UploadTtlMinutes = {options.UploadTtlMinutes.ToString(CultureInfo.InvariantCulture)} and deleted, already used by a job, or never completed); upload the file again");

    /// <summary>Deletes the completed uploads that no job claimed within the TTL; returns how many.</summary>
    public int Sweep()
    {
        var now = clock.GetUtcNow();
        var expired = 0;
        foreach (var (id, e) in entries)
        {
            if (e.Completed is not { } done || now - done < Ttl) continue;
            if (!entries.TryRemove(new KeyValuePair<string, Entry>(id, e))) continue;
            try
            {
                File.Delete(Path.Combine(Dir, id));
                store.RemoveUpload(id);
                expired++;
                log.LogInformation("upload {Id} of {Owner} ({Bytes} bytes) expired unused after {Ttl} min", id, e.Owner, e.Bytes, options.UploadTtlMinutes);
            }
            catch (IOException ex)
            {
                log.LogWarning("could not delete expired upload {Id}: {Message}", id, ex.Message);
            }
        }
        return expired;
    }

    /// <summary>Pending uploads of <paramref name="owner"/>: how many and their bytes.</summary>
    public (int Count, long Bytes) PendingOf(string owner)
    {
        var mine = entries.Values.Where(e => e.Owner == owner).ToList();
        return (mine.Count, mine.Sum(e => e.Bytes));
    }

    /// <summary>
    /// After a restart: the uploads the job store lists are pending again for their owners, their TTL running from when
    /// they completed; a listed upload whose file is gone is forgotten; files it does not list (unfinished parts, or a
    /// file whose client was never given its handle) are deleted.
    /// </summary>
    private void Adopt()
    {
        var listed = store.LoadUploads().ToDictionary(u => u.Id);
        foreach (var u in listed.Values)
        {
            if (File.Exists(Path.Combine(Dir, u.Id))) entries[u.Id] = new Entry(u.Owner, u.Bytes) { Completed = u.Completed };
            else
            {
                log.LogWarning("upload {Id} ({Name}) of {Owner} is in the job store but its file is gone; forgotten", u.Id, u.Name, u.Owner);
                store.RemoveUpload(u.Id);
            }
        }
        if (!Directory.Exists(Dir)) return;
        foreach (var path in Directory.EnumerateFiles(Dir))
        {
            if (listed.ContainsKey(Path.GetFileName(path))) continue;
            log.LogInformation("deleting {Path}: an upload the coordinator never completed", path);
            File.Delete(path);
        }
    }

    public void Dispose() => sweeper.Dispose();
}
