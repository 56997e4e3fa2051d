using System.Globalization;
using Dtrain.Protos.Collective;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Dtrain.Rpc;
using CollectiveGrpc = Dtrain.Protos.Collective.Collective;

namespace Dtrain.Collective;

/// <summary>TLS of one ring: this worker's certificate and the cluster CA, and whose certificate each rank must present.</summary>
public sealed record RingSecurity(ClusterTls Tls, IReadOnlyList<ExpectedPeer> Ranks);

/// <summary>
/// The ring over gRPC: ONE long-lived client-streaming <c>Push</c> call to the right-hand neighbour carries every
/// piece this worker sends in a (job, generation); pieces from the left-hand neighbour arrive through this worker's
/// own <see cref="CollectiveService"/> into the <see cref="RingMailboxes"/> mailbox registered by <see cref="ConnectAsync"/>.
/// Pieces are written zero-copy (the float memory is wrapped, serialisation copies it once into the HTTP/2 frames).
/// If the outbound stream breaks (right neighbour died, refused, or closed), every pending and later send and
/// receive fails with a <see cref="RingTransportException"/> naming the right neighbour's rank and address.
/// </summary>
public sealed class GrpcRingTransport : IRingTransport
{
    /// <summary>How long <see cref="ConnectAsync"/> keeps retrying while the right neighbour is not up / not registered yet.</summary>
    public static readonly TimeSpan DefaultConnectTimeout = TimeSpan.FromSeconds(30);

    private readonly RingMailboxes registry;
    private readonly RingMailbox mailbox;
    private readonly string[] peers;
    private readonly GrpcChannel? channel;
    private readonly AsyncClientStreamingCall<RingChunk, PushReply>? call;
    private readonly SemaphoreSlim writeLock = new(1, 1);
    private readonly CancellationTokenSource broken = new();
    private readonly TimeSpan closeGrace;
    private Exception? fault;
    private volatile bool completing;
    private int disposed;

    private GrpcRingTransport(RingMailboxes registry, RingMailbox mailbox, string[] peers, GrpcChannel? channel, AsyncClientStreamingCall<RingChunk, PushReply>? call,
        TimeSpan closeGrace)
    {
        this.closeGrace = closeGrace;
        this.registry = registry;
        this.mailbox = mailbox;
        this.peers = peers;
        this.channel = channel;
        this.call = call;
        if (call is not null) _ = WatchStreamAsync(call);
    }

    public string JobId => this.mailbox.JobId;

    public long Generation => this.mailbox.Generation;

    public int Rank => this.mailbox.Rank;

    public int WorldSize => this.mailbox.WorldSize;

    private int RightRank => (Rank + 1) % WorldSize;

    private int LeftRank => this.mailbox.LeftRank;

    public string DescribeRank(int rank) => rank >= 0 && rank < this.peers.Length ? $"rank {rank} ({this.peers[rank]})" : $"rank {rank}";

    /// <summary>
    /// Joins ring (<paramref name="jobId"/>, <paramref name="generation"/>) as <paramref name="rank"/>: registers this
    /// worker's mailbox in <paramref name="localMailboxes"/> (superseding older generations of the job), then opens the
    /// Push stream to <c>peerAddresses[(rank + 1) % worldSize]</c> (e.g. "http://10.0.0.7:7001" or "10.0.0.7:7001"),
    /// retrying while that neighbour is not listening or has not registered this generation yet, for up to
    /// <paramref name="connectTimeout"/> (default 30 s). The neighbours must use the same max piece size as
    /// <paramref name="localMailboxes"/>.
    /// </summary>
    /// <remarks>
    /// With <paramref name="security"/> (TLS): the stream to the right neighbour presents this worker's certificate and
    /// accepts only the right neighbour's server certificate; the mailbox accepts only the left neighbour's stream.
    /// </remarks>
    public static async Task<GrpcRingTransport> ConnectAsync(
        string jobId, long generation, int rank, int worldSize, IReadOnlyList<string> peerAddresses, RingMailboxes localMailboxes,
        TimeSpan? connectTimeout = null, RingSecurity? security = null, CollectiveTimeouts? timeouts = null, TimeProvider? time = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(jobId);
        ArgumentNullException.ThrowIfNull(peerAddresses);
        ArgumentNullException.ThrowIfNull(localMailboxes);
        ArgumentOutOfRangeException.ThrowIfLessThan(worldSize, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(rank);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(rank, worldSize);
        if (peerAddresses.Count != worldSize) throw new ArgumentException($"need {worldSize} peer addresses (one per rank), got {peerAddresses.Count}", nameof(peerAddresses));
        if (security is not null && security.Ranks.Count != worldSize)
            throw new ArgumentException($"need {worldSize} peer identities (one per rank), got {security.Ranks.Count}", nameof(security));
        var closeGrace = (timeouts ?? CollectiveTimeouts.Default).Validated().CloseGrace;
        var scheme = security is null ? "http://" : "https://";
        var peers = peerAddresses.Select(a => a.Contains("://", StringComparison.Ordinal) ? a : scheme + a).ToArray();

        var left = (rank - 1 + worldSize) % worldSize;
        var mailbox = localMailboxes.Register(jobId, generation, rank, worldSize, security?.Ranks[left]);
        if (worldSize == 1) return new GrpcRingTransport(localMailboxes, mailbox, peers, null, null, closeGrace);

        var right = (rank + 1) % worldSize;
        var channel = CreateChannel(peers[right], localMailboxes.MaxPieceFloats, security, right);
        try
        {
            var call = await OpenStreamAsync(new CollectiveGrpc.CollectiveClient(channel), jobId, generation, rank, worldSize, right, peers[right],
                connectTimeout ?? DefaultConnectTimeout, time ?? TimeProvider.System, cancellationToken).ConfigureAwait(false);
            return new GrpcRingTransport(localMailboxes, mailbox, peers, channel, call, closeGrace);
        }
        catch (Exception ex)
        {
            channel.Dispose();
            localMailboxes.Unregister(mailbox, new InvalidOperationException($"rank {rank} could not join ring {jobId}/{generation}", ex));
            throw;
        }
    }

    private static GrpcChannel CreateChannel(string address, int maxPieceFloats, RingSecurity? security, int right) =>
        Channels.Create(address, security?.Tls, security?.Ranks[right] ?? ExpectedPeer.AnyMember, new GrpcChannelOptions
        {
            MaxSendMessageSize = maxPieceFloats * sizeof(float) + CollectiveHosting.MessageOverheadBytes,
            MaxReceiveMessageSize = CollectiveHosting.MessageOverheadBytes,
        });

    /// <summary>Starts Push and waits for the neighbour's "accepted" response headers, retrying refusals that may be transient.</summary>
    private static async Task<AsyncClientStreamingCall<RingChunk, PushReply>> OpenStreamAsync(
        CollectiveGrpc.CollectiveClient client, string jobId, long generation, int rank, int worldSize, int right, string address,
        TimeSpan connectTimeout, TimeProvider time, CancellationToken cancellationToken)
    {
        var deadline = time.GetUtcNow() + connectTimeout;
        var delay = TimeSpan.FromMilliseconds(25);
        var headers = new Metadata
        {
            { CollectiveService.JobHeader, jobId },
            { CollectiveService.GenerationHeader, generation.ToString(CultureInfo.InvariantCulture) },
            { CollectiveService.SenderHeader, rank.ToString(CultureInfo.InvariantCulture) },
            { CollectiveService.WorldHeader, worldSize.ToString(CultureInfo.InvariantCulture) },
        };
        RpcException? lastRefusal = null;
        for (var attempt = 1; ; attempt++)
        {
            var call = client.Push(headers);
            Exception failure;
            bool retryable;
            try
            {
                using var attemptTimeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                attemptTimeout.CancelAfter(Max(deadline - time.GetUtcNow(), TimeSpan.FromMilliseconds(1)));
                var response = await call.ResponseHeadersAsync.WaitAsync(attemptTimeout.Token).ConfigureAwait(false);
                if (response.GetValue(CollectiveService.AcceptedHeader) == "accepted") return call;
                // A trailers-only answer: the status says why we were refused.
                await call.ResponseAsync.WaitAsync(attemptTimeout.Token).ConfigureAwait(false);
                failure = new InvalidOperationException("the neighbour ended the stream without accepting it");
                retryable = false;
            }
            catch (RpcException ex)
            {
                failure = ex;
                lastRefusal = ex;
                retryable = ex.StatusCode == StatusCode.Unavailable
                    || (ex.StatusCode == StatusCode.FailedPrecondition && ex.Trailers.GetValue(CollectiveService.RefusalTrailer) == "not-registered");
            }
            catch (OperationCanceledException ex) when (!cancellationToken.IsCancellationRequested)
            {
                // The deadline can cut the last of several refused attempts: say why the earlier ones were refused.
                var before = lastRefusal is null ? "" : $" (the attempt before was refused: {lastRefusal.StatusCode}: {lastRefusal.Status.Detail})";
                failure = new TimeoutException($"no answer within the connect timeout of {connectTimeout.TotalSeconds:0.#} s{before}", ex);
                retryable = false;
            }
            catch
            {
                call.Dispose();
                throw;
            }
            call.Dispose();
            if (!retryable || time.GetUtcNow() + delay > deadline)
            {
                var why = failure is RpcException rpc ? $"{rpc.StatusCode}: {rpc.Status.Detail}" : failure.Message;
                throw new RingTransportException(
                    $"rank {rank} cannot open the ring stream of {jobId}/{generation} to its right neighbour rank {right} ({address}) after {attempt} attempt(s): {why}",
                    right, $"rank {right} ({address})", failure);
            }
            await Task.Delay(delay, time, cancellationToken).ConfigureAwait(false);
            delay = delay * 2 > TimeSpan.FromSeconds(1) ? TimeSpan.FromSeconds(1) : delay * 2;
        }
    }

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    public async ValueTask SendAsync(RingPiece piece, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(piece);
        ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
        if (this.call is null) throw new InvalidOperationException("a ring of one worker has no neighbour to send to");
        ThrowIfBroken();
        var tag = piece.Tag;
        var chunk = new RingChunk
        {
            JobId = JobId,
            Generation = Generation,
            SenderRank = Rank,
            Operation = tag.Operation,
            Phase = tag.Phase,
            RingStep = tag.RingStep,
            Piece = tag.Piece,
            Pieces = piece.Pieces,
            Offset = piece.Offset,
            // Zero-copy: the caller keeps the memory unchanged until this send completes (IRingTransport contract).
            Data = UnsafeByteOperations.UnsafeWrap(piece.Bytes),
        };
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, broken.Token);
        try
        {
            await writeLock.WaitAsync(linked.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw BrokenException();
        }
        var writing = false;
        try
        {
            ThrowIfBroken();
            linked.Token.ThrowIfCancellationRequested();
            writing = true;
            await this.call.RequestStream.WriteAsync(chunk, linked.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested && !writing)
        {
            throw;
        }
        catch (OperationCanceledException ex) when (cancellationToken.IsCancellationRequested)
        {
            // A message may be half written: nothing more can go on this stream.
            Fault(new RingTransportException($"a write to right neighbour {DescribeRank(RightRank)} was cancelled midway; the stream is unusable", RightRank, DescribeRank(RightRank), ex));
            throw;
        }
        catch (Exception ex) when (ex is not RingTransportException)
        {
            Fault(Describe(ex));
            throw BrokenException();
        }
        finally
        {
            writeLock.Release();
        }
    }

    public async ValueTask<RingPiece> ReceiveAsync(RingTag tag, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
        ThrowIfBroken();
        var left = LeftRank;
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, broken.Token);
        try
        {
            return await this.mailbox.ReceiveAsync(tag,
                ex => new RingTransportException($"cannot receive {tag} from left neighbour {DescribeRank(left)}: {ex.Message}", left, DescribeRank(left), ex),
                linked.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested && Volatile.Read(ref this.fault) is not null)
        {
            throw BrokenException();
        }
    }

    /// <summary>Completes the Push stream (waiting up to <see cref="CollectiveTimeouts.CloseGrace"/> for the neighbour to acknowledge), closes the channel and leaves the ring.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        completing = true;
        if (this.call is not null)
        {
            if (Volatile.Read(ref this.fault) is null)
            {
                try
                {
                    using var grace = new CancellationTokenSource(this.closeGrace);
                    await writeLock.WaitAsync(grace.Token).ConfigureAwait(false);
                    await this.call.RequestStream.CompleteAsync().WaitAsync(grace.Token).ConfigureAwait(false);
                    await this.call.ResponseAsync.WaitAsync(grace.Token).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is RpcException or OperationCanceledException or IOException or InvalidOperationException)
                {
                    // best effort: the neighbour may be gone already
                }
            }
            this.call.Dispose();
        }
        this.channel?.Dispose();
        this.registry.Unregister(this.mailbox, new ObjectDisposedException(nameof(GrpcRingTransport), $"rank {Rank} left ring {JobId}/{Generation}"));
    }

    private async Task WatchStreamAsync(AsyncClientStreamingCall<RingChunk, PushReply> call)
    {
        try
        {
            var reply = await call.ResponseAsync.ConfigureAwait(false);
            if (!completing)
                Fault(new RingTransportException($"right neighbour {DescribeRank(RightRank)} ended the ring stream after {reply.ChunksReceived} chunks", RightRank, DescribeRank(RightRank)));
        }
        catch (Exception ex)
        {
            if (!completing) Fault(Describe(ex));
        }
    }

    private RingTransportException Describe(Exception ex)
    {
        var why = ex is RpcException rpc ? $"{rpc.StatusCode}: {rpc.Status.Detail}" : ex.Message;
        return new RingTransportException($"stream to right neighbour {DescribeRank(RightRank)} failed: {why}", RightRank, DescribeRank(RightRank), ex);
    }

    private void Fault(RingTransportException fault)
    {
        if (Interlocked.CompareExchange(ref this.fault, fault, null) is not null) return;
        try { broken.Cancel(); } catch (ObjectDisposedException) { }
    }

    private void ThrowIfBroken()
    {
        if (Volatile.Read(ref this.fault) is not null) throw BrokenException();
    }

    private RingTransportException BrokenException()
    {
        var fault = Volatile.Read(ref this.fault)!;
        return new RingTransportException(fault.Message, RightRank, DescribeRank(RightRank), fault);
    }
}
