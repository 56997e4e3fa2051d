using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Dtrain.Rpc;
using Microsoft.Extensions.Logging;

namespace Dtrain.Collective;

/// <summary>
/// This worker's end of the data plane for tensor bytes: rings over shared memory or TCP, negotiated through the
/// gRPC control plane (<c>Hello</c>, <c>AttachSharedMemory</c> on <see cref="CollectiveService"/>), with today's gRPC
/// <c>Push</c> streams as the fallback. One per process (a singleton registered by <see cref="CollectiveHosting"/>).
/// </summary>
/// <remarks>
/// How a pair is chosen (the sender decides, per directed pair): <c>grpc</c> = the Push stream; <c>tcp</c> = a TCP
/// connection; <c>shm</c> = a shared-memory ring, refused when the peer is not on this host; <c>auto</c> = shared memory
/// when the peer is on this host, TCP otherwise. "On this host" is checked for real: the peer's kernel boot id must be
/// ours, and a probe file the peer just made in its /dev/shm (with a random nonce) must be readable here.
/// Authentication: the receiver hands a fresh 32-byte token to the sender in the answer to <c>Hello</c> — a gRPC call
/// that, with cluster TLS, is mutually authenticated and pinned to the left neighbour's certificate — and accepts a
/// TCP connection or a shared-memory file only with that token, once, for that job, generation and sender rank
/// (a stranger, another job or an older generation is refused). With cluster TLS, a TCP link opens with mutual TLS
/// with the workers' certificates, each side pinned to the peer the coordinator named, and its frames then go as
/// AEGIS-128X2 records keyed from that handshake (<see cref="SealedRecords"/>). Shared-memory files are created
/// with mode 0600 and deleted as soon as the receiver has mapped them.
/// The negotiation's gRPC calls, statuses and trailers live in <see cref="GrpcDataPlane"/>: this class speaks in
/// <see cref="DataPlaneLinkOffer"/> and <see cref="DataPlaneRefusal"/>.
/// </remarks>
/// <param name="time">The clock of its deadlines and of the age of stale probe files (the system's by default).</param>
public sealed class DataPlane(RingMailboxes mailboxes, DataPlaneOptions? options = null, ILogger<DataPlane>? logger = null, TimeProvider? time = null) : IAsyncDisposable
{
    private static readonly Lazy<string> OwnHostId = new(ReadHostId);
    private readonly DataPlaneOptions options = options ?? new DataPlaneOptions();
    private readonly CollectiveTimeouts timeouts = (options?.Timeouts ?? CollectiveTimeouts.Default).Validated();
    private readonly ConcurrentDictionary<(string Job, long Generation, int Sender), byte[]> tokens = new();
    private readonly ConcurrentDictionary<string, byte> probes = new();
    private readonly Lock gate = new();
    private readonly CancellationTokenSource stopping = new();
    private readonly TimeProvider time = time ?? TimeProvider.System;
    private TcpListener? listener;

    public RingMailboxes Mailboxes => mailboxes;

    /// <summary>How a sender reaches a receiver's negotiation calls (gRPC; tests may put another in).</summary>
    internal DataPlanePeerFactory ConnectPeer { get; init; } = GrpcDataPlane.Connect;

    /// <summary>Cluster TLS of this worker (set by the first ring that has it): TCP links then run inside TLS.</summary>
    public ClusterTls? Tls { get; set; }

    /// <summary>This host's identity as peers compare it: the kernel boot id (shared by containers of one host).</summary>
    public static string HostId => OwnHostId.Value;

    private static string ReadHostId()
    {
        try
        {
            return File.ReadAllText("/proc/sys/kernel/random/boot_id").Trim();
        }
        catch (IOException)
        {
            return Environment.MachineName;
        }
    }

    /// <summary>The TCP port this worker receives ring bytes on (starts the listener on first use).</summary>
    public int TcpPort
    {
        get
        {
            lock (gate)
            {
                if (this.listener is null)
                {
                    var address = this.options.Listen == "localhost" ? IPAddress.Loopback : IPAddress.TryParse(this.options.Listen, out var ip) ? ip : IPAddress.Any;
                    var listener = new TcpListener(address, this.options.TcpPort);
                    listener.Start(64);
                    this.listener = listener;
                    _ = AcceptLoopAsync(listener);
                }
                return ((IPEndPoint)this.listener.LocalEndpoint).Port;
            }
        }
    }

    // ---------------------------------------------------------------- receiving side (server)

    /// <summary>
    /// A sender's <c>Hello</c> for channel (<paramref name="jobId"/>, <paramref name="generation"/>): a one-time token,
    /// this host's identity and TCP port, and a /dev/shm probe. <paramref name="caller"/> is who the caller's TLS
    /// certificate says it is (null without TLS). Refusals: <see cref="DataPlaneRefusal"/>.
    /// </summary>
    internal DataPlaneLinkOffer Hello(string jobId, long generation, int sender, int worldSize, PeerIdentity? caller)
    {
        _ = CheckedMailbox(jobId, generation, sender, worldSize, caller);
        var token = RandomNumberGenerator.GetBytes(32);
        tokens[(jobId, generation, sender)] = token;
        // A probe only the same /dev/shm shows: the sender reads it (and deletes it).
        try
        {
            var nonce = Convert.ToHexString(RandomNumberGenerator.GetBytes(16));
            var path = Path.Combine(SharedMemoryRing.Directory, $"dtrain-probe-{Guid.NewGuid():N}");
            File.WriteAllText(path, nonce);
            probes[path] = 0;
            return new DataPlaneLinkOffer(HostId, token, TcpPort, path, nonce);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // no /dev/shm here: shared memory is not offered
            return new DataPlaneLinkOffer(HostId, token, TcpPort, null, null);
        }
    }

    /// <summary>Maps the sender's shared-memory ring at <paramref name="path"/> (it said Hello first); refusals: <see cref="DataPlaneRefusal"/>.</summary>
    internal void AttachSharedMemory(string jobId, long generation, int sender, string path, PeerIdentity? caller)
    {
        var mailbox = CheckedMailbox(jobId, generation, sender, null, caller);
        if (!tokens.TryRemove((jobId, generation, sender), out var token))
            throw new DataPlaneRefusal(DataPlaneRefusalKind.Forbidden, $"ring {jobId}/{generation}: rank {sender} did not say Hello first (no token issued)");
        SharedMemoryRing ring;
        try
        {
            ring = SharedMemoryRing.Open(path, jobId, generation, sender, token, timeouts.PeerSilentAfter);
        }
        catch (Exception ex) when (ex is IOException or InvalidDataException or UnauthorizedAccessException or ArgumentException)
        {
            throw new DataPlaneRefusal(DataPlaneRefusalKind.Refused, $"ring {jobId}/{generation}: cannot map the shared-memory ring of rank {sender}: {ex.Message}");
        }
        if (!mailbox.TryAttachInbound())
        {
            ring.Dispose();
            throw new DataPlaneRefusal(DataPlaneRefusalKind.Refused, $"ring {jobId}/{generation}: rank {mailbox.Rank} already has (or had) a link from rank {sender}, or the ring is closed");
        }
        var thread = new Thread(() => ring.ReadInto(mailbox, mailboxes.MaxPieceFloats * sizeof(float),
            ex => logger?.LogWarning("data plane: the shared-memory link from rank {Sender} of ring {Job}/{Generation} broke: {Reason}", sender, jobId, generation, ex.Message)))
        {
            IsBackground = true,
            Name = $"dtrain shm {sender}->{mailbox.Rank}",
        };
        thread.Start();
        CleanProbes();
    }

    /// <summary>The mailbox of that ring if the caller is its left neighbour (by rank, and with TLS by certificate); <see cref="DataPlaneRefusal"/> otherwise.</summary>
    private RingMailbox CheckedMailbox(string jobId, long generation, int sender, int? world, PeerIdentity? caller)
    {
        var (mailbox, refusal, detail) = mailboxes.Find(jobId, generation);
        if (mailbox is null)
        {
            var kind = refusal switch
            {
                "superseded" => DataPlaneRefusalKind.Superseded,
                "closed" => DataPlaneRefusalKind.Closed,
                _ => DataPlaneRefusalKind.NotRegistered,
            };
            throw new DataPlaneRefusal(kind, detail!);
        }
        if ((world is { } w && w != mailbox.WorldSize) || sender != mailbox.LeftRank)
            throw new DataPlaneRefusal(DataPlaneRefusalKind.Refused, $"ring {jobId}/{generation}: rank {sender} of {world ?? mailbox.WorldSize} is not the {mailbox.SenderRole} of rank {mailbox.Rank} of {mailbox.WorldSize}");
        if (caller is not null
            && (mailbox.ExpectedLeft is null ? $"rank {mailbox.Rank} was given no identity for its {mailbox.SenderRole}" : mailbox.ExpectedLeft.Mismatch(caller)) is { } refused)
            throw new DataPlaneRefusal(DataPlaneRefusalKind.Forbidden,
                $"ring {jobId}/{generation}: a caller claiming to be rank {sender} is refused: {refused}; rank {mailbox.Rank} accepts only its {mailbox.SenderRole} rank {mailbox.LeftRank}");
        return mailbox;
    }

    private void CleanProbes()
    {
        foreach (var path in probes.Keys)
        {
            if (!File.Exists(path) || File.GetCreationTimeUtc(path) < this.time.GetUtcNow().UtcDateTime.AddMinutes(-1))
            {
                SharedMemoryRing.TryDelete(path);
                probes.TryRemove(path, out _);
            }
        }
    }

    private async Task AcceptLoopAsync(TcpListener listener)
    {
        while (!stopping.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await listener.AcceptSocketAsync(stopping.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                if (stopping.IsCancellationRequested) return;
                continue;
            }
            _ = ServeAsync(socket);
        }
    }

    /// <summary>One inbound TCP connection: TLS (if configured), the claim, the checks, then the frames into the ring's mailbox.</summary>
    private async Task ServeAsync(Socket socket)
    {
        var network = new NetworkStream(socket, ownsSocket: true);
        Stream stream = network;
        RingMailbox? mailbox = null;
        SealedRecords.Opener? opener = null;
        try
        {
            TcpLink.Tune(socket);
            using var handshake = CancellationTokenSource.CreateLinkedTokenSource(stopping.Token);
            handshake.CancelAfter(timeouts.Handshake);
            PeerIdentity? peer = null;
            var tls = Tls;
            if (tls is not null)
            {
                // The inner stream stays open: after the handshake the sender's records come in plain TCP (see SealedRecords).
                var ssl = new SslStream(network, leaveInnerStreamOpen: true);
                stream = ssl;
                await ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
                {
                    ServerCertificate = tls.ServerCertificate,
                    ClientCertificateRequired = true,
                    RemoteCertificateValidationCallback = (_, certificate, _, _) => certificate is X509Certificate2 c && tls.Identify(c, asServer: false, out _) is not null,
                }, handshake.Token).ConfigureAwait(false);
                peer = ssl.RemoteCertificate is X509Certificate2 presented ? tls.Identify(presented, asServer: false, out _) : null;
            }
            var claim = await TcpLink.ReadClaimAsync(stream, handshake.Token).ConfigureAwait(false);
            var refusal = Check(claim, peer, tls is not null, out mailbox);
            opener = await TcpLink.AnswerAsync(stream, refusal, claim, handshake.Token).ConfigureAwait(false);
            if (refusal is not null)
            {
                logger?.LogWarning("data plane: refused a TCP connection from {Remote}: {Reason}", socket.RemoteEndPoint, refusal);
                await stream.DisposeAsync().ConfigureAwait(false);
                await network.DisposeAsync().ConfigureAwait(false);
                return;
            }
            if (stream is SslStream done)
            {
                // Its key share was the last thing sent inside TLS; the sender's records follow on the socket itself.
                await done.DisposeAsync().ConfigureAwait(false);
                stream = network;
            }
        }
        catch (Exception ex)
        {
            logger?.LogWarning("data plane: TCP connection from {Remote} failed before it was accepted: {Reason}", SafeRemote(socket), ex.Message);
            if (mailbox is not null) mailbox.CompleteInbound(ex);
            opener?.Dispose();
            await stream.DisposeAsync().ConfigureAwait(false);
            await network.DisposeAsync().ConfigureAwait(false);
            return;
        }
        // Blocking reads on a thread of the link's own (no async hop per segment or record), like the shared-memory reader.
        var maxBytes = mailboxes.MaxPieceFloats * sizeof(float);
        var inbound = mailbox!;
        var records = opener;
        var thread = new Thread(() => TcpLink.ReceiveBlocking(socket, network, inbound, maxBytes, stopping.Token,
            ex => logger?.LogWarning("data plane: the TCP link from rank {Sender} of ring {Job}/{Generation} broke: {Reason}", inbound.LeftRank, inbound.JobId, inbound.Generation, ex.Message),
            records))
        {
            IsBackground = true,
            Name = $"dtrain tcp {inbound.LeftRank}->{inbound.Rank}",
        };
        thread.Start();
    }

    private static string SafeRemote(Socket socket)
    {
        try
        {
            return socket.RemoteEndPoint?.ToString() ?? "?";
        }
        catch (ObjectDisposedException)
        {
            return "?";
        }
    }

    private string? Check(TcpLink.Claim claim, PeerIdentity? peer, bool tls, out RingMailbox? mailbox)
    {
        mailbox = null;
        var (found, _, detail) = mailboxes.Find(claim.JobId, claim.Generation);
        if (found is null) return detail;
        if (claim.WorldSize != found.WorldSize || claim.Sender != found.LeftRank)
            return $"ring {claim.JobId}/{claim.Generation}: rank {claim.Sender} of {claim.WorldSize} is not the {found.SenderRole} of rank {found.Rank} of {found.WorldSize}";
        if (tls && (found.ExpectedLeft is null ? $"no identity is known for the {found.SenderRole}" : found.ExpectedLeft.Mismatch(peer)) is { } who)
            return $"ring {claim.JobId}/{claim.Generation}: the connection claiming to be rank {claim.Sender} is refused: {who}";
        if (!tokens.TryRemove((claim.JobId, claim.Generation, claim.Sender), out var token) || !CryptographicOperations.FixedTimeEquals(token, claim.Token))
            return $"ring {claim.JobId}/{claim.Generation}: rank {claim.Sender} did not present the token this worker gave it (say Hello over gRPC first)";
        if (!found.TryAttachInbound()) return $"ring {claim.JobId}/{claim.Generation}: rank {found.Rank} already has (or had) a link from rank {claim.Sender}, or the ring is closed";
        mailbox = found;
        return null;
    }

    // ---------------------------------------------------------------- sending side (client)

    /// <summary>
    /// Joins ring (<paramref name="jobId"/>, <paramref name="generation"/>) as <paramref name="rank"/> with this
    /// worker's choice of <paramref name="transport"/> for the link to its right neighbour (the left neighbour's own
    /// choice decides the inbound link). Retries while the neighbour is not up or has not joined yet, for up to
    /// <paramref name="connectTimeout"/>. Failures: <see cref="RingTransportException"/> naming the neighbour.
    /// </summary>
    public async Task<IRingTransport> ConnectRingAsync(string jobId, long generation, int rank, int worldSize, IReadOnlyList<string> peerAddresses,
        DataTransport transport, TimeSpan? connectTimeout = null, RingSecurity? security = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(jobId);
        ArgumentNullException.ThrowIfNull(peerAddresses);
        if (security is not null) Tls ??= security.Tls;
        var timeout = connectTimeout ?? GrpcRingTransport.DefaultConnectTimeout;
        if (transport == DataTransport.Grpc)
            return await GrpcRingTransport.ConnectAsync(jobId, generation, rank, worldSize, peerAddresses, mailboxes, timeout, security, timeouts, this.time, cancellationToken).ConfigureAwait(false);
        ArgumentOutOfRangeException.ThrowIfLessThan(worldSize, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(rank);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(rank, worldSize);
        if (peerAddresses.Count != worldSize) throw new ArgumentException($"need {worldSize} peer addresses (one per rank), got {peerAddresses.Count}", nameof(peerAddresses));
        var scheme = security is null ? "http://" : "https://";
        var peers = peerAddresses.Select(a => a.Contains("://", StringComparison.Ordinal) ? a : scheme + a).ToArray();
        var left = (rank - 1 + worldSize) % worldSize;
        var right = (rank + 1) % worldSize;
        var mailbox = mailboxes.Register(jobId, generation, rank, worldSize, security?.Ranks[left]);
        ValueTask Leave()
        {
            mailboxes.Unregister(mailbox, new ObjectDisposedException(nameof(DataPlane), $"rank {rank} left ring {jobId}/{generation}"));
            return ValueTask.CompletedTask;
        }
        if (worldSize == 1) return new PeerRingTransport(new PeerMesh(rank, worldSize, peers, new Dictionary<int, IOutboundLink>(), new Dictionary<int, RingMailbox> { [left] = mailbox }, Leave));
        try
        {
            var link = await OpenLinkAsync(jobId, generation, rank, worldSize, right, peers[right], transport, timeout, security?.Ranks[right], security?.Tls,
                $"the ring stream of {jobId}/{generation} to its right neighbour", cancellationToken).ConfigureAwait(false);
            return new PeerRingTransport(new PeerMesh(rank, worldSize, peers, new Dictionary<int, IOutboundLink> { [right] = link }, new Dictionary<int, RingMailbox> { [left] = mailbox }, Leave));
        }
        catch
        {
            await Leave().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Opens this worker's outbound link of channel <paramref name="jobId"/> (a ring, or a stage link) to
    /// <paramref name="peer"/>: Hello over gRPC (pinned to <paramref name="expected"/> with TLS), then shared memory or TCP.
    /// </summary>
    internal async Task<IOutboundLink> OpenLinkAsync(string jobId, long generation, int rank, int worldSize, int peer, string address, DataTransport transport,
        TimeSpan connectTimeout, ExpectedPeer? expected, ClusterTls? tls, string what, CancellationToken cancellationToken)
    {
        using var receiver = ConnectPeer(address, tls, expected ?? ExpectedPeer.AnyMember);
        var deadline = this.time.GetUtcNow() + connectTimeout;
        RingTransportException Failed(string why, Exception? inner = null) =>
            new($"rank {rank} cannot open {what} rank {peer} ({address}): {why}", peer, $"rank {peer} ({address})", inner);

        var offer = await RetryAsync(() => receiver.HelloAsync(jobId, generation, rank, worldSize, deadline, cancellationToken), deadline, Failed, cancellationToken).ConfigureAwait(false);
        var sameHost = SameHost(offer, out var why);
        var kind = transport switch
        {
            DataTransport.Shm when !sameHost => throw Failed($"the transport is shm but the peer is not on this host ({why})"),
            DataTransport.Shm => DataTransport.Shm,
            DataTransport.Tcp => DataTransport.Tcp,
            _ => sameHost ? DataTransport.Shm : DataTransport.Tcp,
        };
        var token = offer.Token;
        try
        {
            if (kind == DataTransport.Shm)
            {
                var capacity = Math.Max(this.options.SharedMemoryBytes, 2L * (mailboxes.MaxPieceFloats * sizeof(float) + PieceFrame.Size + 8));
                var path = Path.Combine(SharedMemoryRing.Directory, $"dtrain-{Environment.ProcessId}-{Guid.NewGuid():N}.ring");
                var ring = SharedMemoryRing.Create(path, capacity, jobId, generation, rank, token, timeouts.PeerSilentAfter);
                try
                {
                    await receiver.AttachSharedMemoryAsync(jobId, generation, rank, path, this.time.GetUtcNow() + connectTimeout, cancellationToken).ConfigureAwait(false);
                }
                catch
                {
                    ring.Dispose();
                    throw;
                }
                finally
                {
                    SharedMemoryRing.TryDelete(path);
                }
                return new SharedMemoryOutbound(ring, timeouts.CloseGrace);
            }
            var host = new Uri(address).Host;
            return await TcpLink.ConnectAsync(host, offer.TcpPort, jobId, generation, rank, worldSize, token, tls, expected, cancellationToken, timeouts.CloseGrace).ConfigureAwait(false);
        }
        catch (DataPlaneRefusal ex)
        {
            throw Failed($"{DataTransports.Describe(kind)}: {ex.Message}", ex);
        }
        catch (Exception ex) when (ex is IOException or SocketException or InvalidOperationException or System.Security.Authentication.AuthenticationException or UnauthorizedAccessException)
        {
            throw Failed($"{DataTransports.Describe(kind, tls is not null)}: {ex.Message}", ex);
        }
    }

    private static bool SameHost(DataPlaneLinkOffer offer, out string why)
    {
        if (offer.HostId != HostId)
        {
            why = "another kernel boot id";
            return false;
        }
        if (string.IsNullOrEmpty(offer.ProbePath))
        {
            why = "it offers no /dev/shm";
            return false;
        }
        try
        {
            var ok = offer.ProbePath.StartsWith(SharedMemoryRing.Directory + "/dtrain-probe-", StringComparison.Ordinal) && !offer.ProbePath.Contains("..", StringComparison.Ordinal)
                && File.ReadAllText(offer.ProbePath) == offer.ProbeNonce;
            SharedMemoryRing.TryDelete(offer.ProbePath);
            why = ok ? "" : "its /dev/shm probe is not visible here (another /dev/shm)";
            return ok;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            why = "its /dev/shm probe is not visible here (another /dev/shm)";
            return false;
        }
    }

    /// <summary>Retries calls refused as not-registered (the neighbour has not joined yet) or unavailable, until the deadline.</summary>
    private async Task<T> RetryAsync<T>(Func<Task<T>> call, DateTimeOffset deadline, Func<string, Exception?, RingTransportException> failed, CancellationToken cancellationToken)
    {
        var delay = TimeSpan.FromMilliseconds(25);
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                return await call().ConfigureAwait(false);
            }
            catch (DataPlaneRefusal ex)
            {
                if (ex.Kind == DataPlaneRefusalKind.NoAnswer) throw failed(string.Create(CultureInfo.InvariantCulture, $"no answer after {attempt} attempt(s)"), ex);
                if (!ex.Retryable || this.time.GetUtcNow() + delay > deadline)
                    throw failed(string.Create(CultureInfo.InvariantCulture, $"after {attempt} attempt(s): {ex.Message}"), ex);
            }
            await Task.Delay(delay, this.time, cancellationToken).ConfigureAwait(false);
            delay = delay * 2 > TimeSpan.FromSeconds(1) ? TimeSpan.FromSeconds(1) : delay * 2;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await stopping.CancelAsync().ConfigureAwait(false);
        lock (gate)
        {
            this.listener?.Stop();
            this.listener = null;
        }
        foreach (var path in probes.Keys) SharedMemoryRing.TryDelete(path);
        probes.Clear();
    }
}
