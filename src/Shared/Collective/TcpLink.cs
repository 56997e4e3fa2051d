using System.Buffers;
using System.Buffers.Binary;
using System.Net.Security;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Dtrain.Rpc;

namespace Dtrain.Collective;

/// <summary>
/// Tensor bytes over one TCP connection per directed pair. The connection opens with a handshake (magic, job,
/// generation, sender rank, world size, and the one-time token the receiver handed out over the authenticated gRPC
/// <c>Hello</c>); the receiver answers with a status byte and a reason. Then frames: <see cref="PieceFrame"/> + the
/// piece's bytes, written straight from the caller's memory (no copy) and read into pooled buffers. With cluster TLS
/// (<c>tcp+tls</c>) the handshake runs inside mutual TLS with the workers' certificates, each side pinned to the peer
/// the coordinator named, and carries an ephemeral ECDH exchange bound to both certificates and the claim; the frames
/// then go as AEGIS-128X2 records under the key it gives (<see cref="SealedRecords"/>), in plain TCP: large records sealed
/// in one pass and opened in one pass (in place, or from the link's record buffer into place), where <see cref="SslStream"/> cut them into 16 KB TLS records and copied them
/// through its own buffers.
/// </summary>
internal static class TcpLink
{
    private static readonly byte[] Magic = "DTRNTCP6"u8.ToArray();   // 6: AEGIS-128X2 (5: AEGIS-128L; 4: AES-128-GCM, 1 MiB records; 3: 256 KiB; 2: AES-256)
    public const int SocketBufferBytes = 4 * 1024 * 1024;
    private const int MaxJobIdBytes = 4096;

    public static void Tune(Socket socket)
    {
        socket.NoDelay = true;
        socket.SendBufferSize = SocketBufferBytes;
        socket.ReceiveBufferSize = SocketBufferBytes;
        socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
        socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime, 10);
        socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval, 5);
        socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount, 3);
    }

    /// <summary>
    /// Connects, authenticates (with <paramref name="tls"/>: mutual TLS, the receiver pinned to <paramref name="expectedRight"/>,
    /// then the key exchange of the sealed records) and hands the connection over as an outbound link, which closes within
    /// <paramref name="closeGrace"/> (default <see cref="CollectiveTimeouts.CloseGrace"/>).
    /// </summary>
    public static async Task<IOutboundLink> ConnectAsync(string host, int port, string jobId, long generation, int rank, int worldSize, byte[] token,
        ClusterTls? tls, ExpectedPeer? expectedRight, CancellationToken cancellationToken, TimeSpan? closeGrace = null)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        NetworkStream? network = null;
        SslStream? ssl = null;
        var done = false;
        try
        {
            Tune(socket);
            await socket.ConnectAsync(host, port, cancellationToken).ConfigureAwait(false);
            network = new NetworkStream(socket, ownsSocket: true);
            Stream stream = network;
            using var share = tls is null ? null : ECDiffieHellman.Create(ECCurve.NamedCurves.nistP256);
            if (tls is not null)
            {
                // The inner stream stays open: after the handshake the records go in plain TCP (see SealedRecords).
                ssl = new SslStream(network, leaveInnerStreamOpen: true);
                stream = ssl;
                await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
                {
                    TargetHost = host,
                    ClientCertificates = tls.Certificate is { } own ? [own] : [],
                    RemoteCertificateValidationCallback = (_, certificate, _, _) =>
                        certificate is X509Certificate2 c && tls.Identify(c, asServer: true, out _) is { } identity
                        && (expectedRight ?? ExpectedPeer.AnyMember).Mismatch(identity) is null,
                }, cancellationToken).ConfigureAwait(false);
            }
            var claim = new Claim(jobId, generation, rank, worldSize, token, share?.PublicKey.ExportSubjectPublicKeyInfo());
            await stream.WriteAsync(claim.Encode(), cancellationToken).ConfigureAwait(false);
            await stream.FlushAsync(cancellationToken).ConfigureAwait(false);
            var status = new byte[5];
            await stream.ReadExactlyAsync(status, cancellationToken).ConfigureAwait(false);
            var reasonLength = BinaryPrimitives.ReadInt32LittleEndian(status.AsSpan(1));
            if (status[0] != 0)
            {
                var reason = new byte[Math.Clamp(reasonLength, 0, 64 * 1024)];
                await stream.ReadExactlyAsync(reason, cancellationToken).ConfigureAwait(false);
                throw new InvalidOperationException($"refused: {Encoding.UTF8.GetString(reason)}");
            }
            SealedRecords.Sealer? sealer = null;
            if (ssl is not null)
            {
                // The receiver's key share is the last thing either side sends inside TLS: nothing is left in the SslStream.
                var theirs = await ReadShareAsync(ssl, cancellationToken).ConfigureAwait(false);
                var secret = KeyAgreement(share!, theirs, Transcript(claim, theirs, sender: ssl.LocalCertificate, receiver: ssl.RemoteCertificate));
                sealer = new SealedRecords.Sealer(secret, keyBytes: SealedRecords.KeyBytes);
                CryptographicOperations.ZeroMemory(secret);
                ssl.Dispose();
            }
            var link = new Outbound(socket, network, sealer, closeGrace ?? CollectiveTimeouts.Default.CloseGrace);
            done = true;
            return link;
        }
        finally
        {
            if (!done)
            {
                if (ssl is not null) await ssl.DisposeAsync().ConfigureAwait(false);
                if (network is not null) await network.DisposeAsync().ConfigureAwait(false);
                socket.Dispose();
            }
        }
    }

    private const int MaxShareBytes = 512;

    private static async Task<byte[]> ReadShareAsync(Stream stream, CancellationToken cancellationToken)
    {
        var length = new byte[4];
        await stream.ReadExactlyAsync(length, cancellationToken).ConfigureAwait(false);
        var n = BinaryPrimitives.ReadInt32LittleEndian(length);
        if (n is < 1 or > MaxShareBytes) throw new InvalidDataException($"a key share of {n} bytes (at most {MaxShareBytes})");
        var share = new byte[n];
        await stream.ReadExactlyAsync(share, cancellationToken).ConfigureAwait(false);
        return share;
    }

    /// <summary>
    /// SHA-256 of everything the two ends agreed on: a label, the sender's and the receiver's certificates as presented in
    /// the TLS handshake, the claim (job, generation, ranks, the one-time token, the sender's key share) and the
    /// receiver's key share. Both ends compute it from what they sent and saw; any difference gives different keys.
    /// </summary>
    internal static byte[] Transcript(Claim claim, byte[] receiverShare, X509Certificate? sender, X509Certificate? receiver)
    {
        if (sender is null || receiver is null) throw new System.Security.Authentication.AuthenticationException("the TLS handshake ended without both workers' certificates");
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData("dtrain tcp+tls transcript v1"u8);
        hash.AppendData(SHA256.HashData(sender.GetRawCertData()));
        hash.AppendData(SHA256.HashData(receiver.GetRawCertData()));
        hash.AppendData(claim.Encode());
        Span<byte> length = stackalloc byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(length, receiverShare.Length);
        hash.AppendData(length);
        hash.AppendData(receiverShare);
        return hash.GetHashAndReset();
    }

    /// <summary>The traffic secret from our ephemeral key and the peer's share (a P-256 point; anything else is refused).</summary>
    internal static byte[] KeyAgreement(ECDiffieHellman own, byte[] theirShare, byte[] transcript)
    {
        using var theirs = ECDiffieHellman.Create();
        try
        {
            theirs.ImportSubjectPublicKeyInfo(theirShare, out var read);
            if (read != theirShare.Length || theirs.KeySize != 256 || theirs.ExportParameters(false).Curve.Oid.Value != ECCurve.NamedCurves.nistP256.Oid.Value)
                throw new InvalidDataException("the peer's key share is not a P-256 public key");
            var shared = own.DeriveRawSecretAgreement(theirs.PublicKey);
            try
            {
                return SealedRecords.TrafficSecret(shared, transcript);
            }
            finally
            {
                CryptographicOperations.ZeroMemory(shared);
            }
        }
        catch (CryptographicException ex)
        {
            throw new InvalidDataException($"the peer's key share is not a usable P-256 public key: {ex.Message}", ex);
        }
    }

    /// <summary>What the connecting side claims, read by the listener before it looks the ring up; with TLS, its key share.</summary>
    public sealed record Claim(string JobId, long Generation, int Sender, int WorldSize, byte[] Token, byte[]? Share = null)
    {
        /// <summary>The bytes on the wire: magic, job, generation, sender, world, token, and the key share (length 0 without TLS).</summary>
        public byte[] Encode()
        {
            var job = Encoding.UTF8.GetBytes(JobId);
            var share = Share ?? [];
            var hello = new byte[Magic.Length + 4 + job.Length + 8 + 4 + 4 + 4 + Token.Length + 4 + share.Length];
            var span = hello.AsSpan();
            Magic.CopyTo(span);
            var at = Magic.Length;
            BinaryPrimitives.WriteInt32LittleEndian(span[at..], job.Length); at += 4;
            job.CopyTo(span[at..]); at += job.Length;
            BinaryPrimitives.WriteInt64LittleEndian(span[at..], Generation); at += 8;
            BinaryPrimitives.WriteInt32LittleEndian(span[at..], Sender); at += 4;
            BinaryPrimitives.WriteInt32LittleEndian(span[at..], WorldSize); at += 4;
            BinaryPrimitives.WriteInt32LittleEndian(span[at..], Token.Length); at += 4;
            Token.CopyTo(span[at..]); at += Token.Length;
            BinaryPrimitives.WriteInt32LittleEndian(span[at..], share.Length); at += 4;
            share.CopyTo(span[at..]);
            return hello;
        }
    }

    public static async Task<Claim> ReadClaimAsync(Stream stream, CancellationToken cancellationToken)
    {
        var magic = new byte[Magic.Length + 4];
        await stream.ReadExactlyAsync(magic, cancellationToken).ConfigureAwait(false);
        if (!magic.AsSpan(0, Magic.Length).SequenceEqual(Magic)) throw new InvalidDataException("not a dtrain data-plane connection of this version (bad magic)");
        var jobLength = BinaryPrimitives.ReadInt32LittleEndian(magic.AsSpan(Magic.Length));
        if (jobLength is < 1 or > MaxJobIdBytes) throw new InvalidDataException($"job id of {jobLength} bytes");
        var rest = new byte[jobLength + 8 + 4 + 4 + 4];
        await stream.ReadExactlyAsync(rest, cancellationToken).ConfigureAwait(false);
        var span = rest.AsSpan();
        var job = Encoding.UTF8.GetString(span[..jobLength]);
        var at = jobLength;
        var generation = BinaryPrimitives.ReadInt64LittleEndian(span[at..]); at += 8;
        var sender = BinaryPrimitives.ReadInt32LittleEndian(span[at..]); at += 4;
        var world = BinaryPrimitives.ReadInt32LittleEndian(span[at..]); at += 4;
        var tokenLength = BinaryPrimitives.ReadInt32LittleEndian(span[at..]);
        if (tokenLength is < 0 or > 256) throw new InvalidDataException($"token of {tokenLength} bytes");
        var token = new byte[tokenLength + 4];
        await stream.ReadExactlyAsync(token, cancellationToken).ConfigureAwait(false);
        var shareLength = BinaryPrimitives.ReadInt32LittleEndian(token.AsSpan(tokenLength));
        if (shareLength is < 0 or > MaxShareBytes) throw new InvalidDataException($"a key share of {shareLength} bytes (at most {MaxShareBytes})");
        var share = new byte[shareLength];
        await stream.ReadExactlyAsync(share, cancellationToken).ConfigureAwait(false);
        return new Claim(job, generation, sender, world, token[..tokenLength], shareLength == 0 ? null : share);
    }

    /// <summary>
    /// The receiver's answer: a status byte and the refusal's reason; when accepted over TLS, its key share, and the
    /// opener of the sender's records (the traffic secret from a fresh key share of its own and the claim's).
    /// </summary>
    public static async Task<SealedRecords.Opener?> AnswerAsync(Stream stream, string? refusal, Claim? claim, CancellationToken cancellationToken)
    {
        var reason = refusal is null ? [] : Encoding.UTF8.GetBytes(refusal);
        SealedRecords.Opener? opener = null;
        byte[] share = [];
        if (refusal is null && stream is SslStream ssl)
        {
            if (claim?.Share is not { } theirs) throw new InvalidDataException("a TLS connection without the sender's key share");
            using var own = ECDiffieHellman.Create(ECCurve.NamedCurves.nistP256);
            share = own.PublicKey.ExportSubjectPublicKeyInfo();
            var secret = KeyAgreement(own, theirs, Transcript(claim, share, sender: ssl.RemoteCertificate, receiver: ssl.LocalCertificate));
            opener = new SealedRecords.Opener(secret, keyBytes: SealedRecords.KeyBytes);
            CryptographicOperations.ZeroMemory(secret);
        }
        var answer = new byte[5 + reason.Length + (share.Length > 0 ? 4 + share.Length : 0)];
        answer[0] = refusal is null ? (byte)0 : (byte)1;
        BinaryPrimitives.WriteInt32LittleEndian(answer.AsSpan(1), reason.Length);
        reason.CopyTo(answer, 5);
        if (share.Length > 0)
        {
            BinaryPrimitives.WriteInt32LittleEndian(answer.AsSpan(5 + reason.Length), share.Length);
            share.CopyTo(answer, 9 + reason.Length);
        }
        try
        {
            await stream.WriteAsync(answer, cancellationToken).ConfigureAwait(false);
            await stream.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            opener?.Dispose();
            throw;
        }
        return opener;
    }

    /// <summary>
    /// Reads frames with blocking reads (on a thread of its own; a stop closes the socket) until the sender closes or the
    /// connection breaks. With <paramref name="opener"/> (a tcp+tls link) the frames come as sealed records: one that
    /// fails authentication, comes out of order or is cut short breaks the link with that reason.
    /// </summary>
    public static void ReceiveBlocking(Socket socket, Stream stream, RingMailbox mailbox, int maxBytes, CancellationToken stop, Action<Exception>? failed = null,
        SealedRecords.Opener? opener = null)
    {
        using var closeOnStop = stop.Register(() => socket.Dispose());
        mailbox.AbortInbound = socket.Dispose;
        var header = new byte[PieceFrame.Size];
        var frames = opener is null ? new FrameReader(stream) : new SealedFrameReader(stream, opener);
        byte[]? scratch = null;
        try
        {
            while (mailbox.ClosedReason is null)
            {
                if (!frames.ReadHeader(header)) break;
                var (tag, pieces, offset, length, shape) = PieceFrame.Read(header, maxBytes, mailbox.WorldSize, mailbox.Kind);
                if (shape is null && mailbox.TryClaim(tag, blockingRead: true) is { } landing)
                {
                    // Expected: read straight into place (a copy), or into this link's one scratch buffer and add from there.
                    try
                    {
                        if (landing.TakesDirect(offset, pieces, length))
                        {
                            frames.ReadPayloadInto(MemoryMarshal.AsBytes(landing.Destination.Span));
                            landing.Complete();
                        }
                        else if (landing.TakesStreamed(offset, pieces, length))
                        {
                            frames.ReadPayloadAdding(landing, length);
                            landing.Complete();
                        }
                        else
                        {
                            scratch ??= new byte[maxBytes];
                            frames.ReadPayload(scratch.AsSpan(0, length));
                            landing.Apply(scratch.AsSpan(0, length), offset, pieces);
                        }
                    }
                    catch (Exception ex)
                    {
                        mailbox.Fail(landing, ex);
                        throw;
                    }
                    finally
                    {
                        mailbox.Release(landing);
                    }
                    continue;
                }
                var buffer = ArrayPool<byte>.Shared.Rent(Math.Max(length, 1));
                var owner = new Pooled(buffer);
                try
                {
                    frames.ReadPayload(buffer.AsSpan(0, length));
                }
                catch
                {
                    owner.Dispose();
                    throw;
                }
                mailbox.Deliver(RingPiece.FromBytes(tag, offset, pieces, buffer.AsMemory(0, length), owner).WithShape(shape));
            }
            mailbox.CompleteInbound(null);
        }
        catch (Exception ex)
        {
            if (!stop.IsCancellationRequested) failed?.Invoke(ex);
            mailbox.CompleteInbound(ex);
        }
        finally
        {
            opener?.Dispose();
            stream.Dispose();
        }
    }

    /// <summary>Reads until <paramref name="buffer"/> is full or the peer closes; returns the bytes read.</summary>
    private static int Fill(Stream stream, Span<byte> buffer) => stream.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);

    /// <summary>Frames as they are on a plain TCP link: the header, then the payload.</summary>
    private class FrameReader(Stream stream)
    {
        protected Stream Stream => stream;

        /// <summary>Reads the next frame header; false when the sender closed the connection (cleanly) before it.</summary>
        public virtual bool ReadHeader(Span<byte> header)
        {
            var got = Fill(stream, header);
            if (got == 0) return false;
            if (got < header.Length) throw new EndOfStreamException("the connection ended inside a frame header");
            return true;
        }

        public virtual void ReadPayload(Span<byte> payload)
        {
            if (Fill(stream, payload) < payload.Length) throw new EndOfStreamException("the connection ended inside a frame");
        }

        /// <summary>Reads a payload straight into its place in the caller's memory.</summary>
        public virtual void ReadPayloadInto(Span<byte> destination) => ReadPayload(destination);

        private byte[]? buffer;

        /// <summary>This link's one buffer of a sealed record's size (allocated at first use): a streamed sum's parts, a sealed link's ciphertext.</summary>
        protected byte[] LinkBuffer => buffer ??= GC.AllocateUninitializedArray<byte>(SealedRecords.ChunkBytes);

        /// <summary>
        /// Reads a payload of <paramref name="length"/> bytes part by part into <see cref="LinkBuffer"/> (a sealed link: a
        /// record at a time, opened there in place) and adds each part into <paramref name="landing"/>'s destination: the
        /// buffer stays in cache, so the sum reads the piece's values from there instead of from a whole-piece buffer in
        /// memory (one pass over the destination, none over a scratch copy).
        /// </summary>
        public void ReadPayloadAdding(RingLanding landing, int length)
        {
            for (var done = 0; done < length;)
            {
                var chunk = LinkBuffer.AsSpan(0, Math.Min(SealedRecords.ChunkBytes, length - done));
                ReadPayload(chunk);
                landing.AddPart(chunk, done);
                done += chunk.Length;
            }
        }
    }

    /// <summary>
    /// Frames as sealed records (tcp+tls): the header record, then the payload records, each opened in place (or, for a
    /// piece landing straight into the caller's memory, from this link's record buffer into place); a close record ends the stream.
    /// </summary>
    private sealed class SealedFrameReader(Stream stream, SealedRecords.Opener opener) : FrameReader(stream)
    {
        private readonly byte[] head = new byte[SealedRecords.HeadBytes];

        /// <summary>
        /// Each record's ciphertext into this link's one record buffer (the kernel's copy lands in cache), opened from
        /// there into place: one pass over the destination instead of the kernel's copy and an in-place open (less CPU
        /// in the ring: docs/benchmarks.md, issue 25). A record that fails authentication leaves its part of the
        /// destination cleared, never unauthenticated bytes.
        /// </summary>
        public override void ReadPayloadInto(Span<byte> destination) => Read(destination, viaBuffer: true);

        public override bool ReadHeader(Span<byte> header)
        {
            var got = Fill(Stream, head);
            if (got == 0) throw new EndOfStreamException("the connection ended without the sender's close record (cut short, or the sender died)");
            if (got < head.Length) throw new EndOfStreamException("the connection ended inside a record");
            var (type, length) = opener.Check(head, SealedRecords.FrameHeader, header.Length, orClose: true);
            if (type == SealedRecords.Close)
            {
                opener.Open(head, []);
                return false;
            }
            if (length != header.Length) throw new InvalidDataException($"a frame header record of {length} bytes (a header is {header.Length})");
            if (Fill(Stream, header) < header.Length) throw new EndOfStreamException("the connection ended inside a record");
            opener.Open(head, header);
            return true;
        }

        /// <summary>Each record's ciphertext read into <paramref name="payload"/> and opened there, in place.</summary>
        public override void ReadPayload(Span<byte> payload) => Read(payload, viaBuffer: false);

        private void Read(Span<byte> payload, bool viaBuffer)
        {
            var buffer = viaBuffer ? LinkBuffer : null;
            for (var done = 0; done < payload.Length;)
            {
                var n = Math.Min(SealedRecords.ChunkBytes, payload.Length - done);
                if (Fill(Stream, head) < head.Length) throw new EndOfStreamException("the connection ended inside a frame");
                var (_, length) = opener.Check(head, SealedRecords.Payload, SealedRecords.ChunkBytes, orClose: false);
                if (length != n) throw new InvalidDataException($"a payload record of {length} bytes where the frame's next {n} bytes were due");
                var chunk = payload.Slice(done, n);
                var ciphertext = buffer is null ? chunk : buffer.AsSpan(0, n);
                if (Fill(Stream, ciphertext) < n) throw new EndOfStreamException("the connection ended inside a record");
                opener.Open(head, ciphertext, chunk);
                done += n;
            }
        }
    }

    private sealed class Pooled(byte[] buffer) : IDisposable
    {
        private byte[]? buffer = buffer;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref this.buffer, null) is { } b) ArrayPool<byte>.Shared.Return(b);
        }
    }

    /// <summary>
    /// The sending end: one writer at a time; a watcher notices the receiver closing or dying while we are idle. With a
    /// <see cref="SealedRecords.Sealer"/> (tcp+tls) each frame goes as sealed records, each written as soon as it is sealed.
    /// </summary>
    private sealed class Outbound : IOutboundLink
    {
        private readonly Socket socket;
        private readonly Stream stream;
        private readonly SealedRecords.Sealer? sealer;
        private readonly SemaphoreSlim writeLock = new(1, 1);
        private readonly byte[] header = new byte[PieceFrame.Size];
        private readonly CancellationTokenSource broken = new();
        private byte[]? sealedBuffer;
        private Exception? fault;
        private int disposed;

        private readonly TimeSpan closeGrace;

        public Outbound(Socket socket, Stream stream, SealedRecords.Sealer? sealer, TimeSpan closeGrace)
        {
            this.closeGrace = closeGrace;
            this.socket = socket;
            this.stream = stream;
            this.sealer = sealer;
            Kind = DataTransports.Describe(DataTransport.Tcp, sealer is not null);
            _ = WatchAsync();
        }

        public string Kind { get; }

        public CancellationToken Broken => broken.Token;

        public Exception? Fault => Volatile.Read(ref this.fault);

        private async Task WatchAsync()
        {
            // The receiver never writes after the handshake: a read that returns means it closed or the connection broke.
            var one = new byte[1];
            try
            {
                var n = await this.socket.ReceiveAsync(one, SocketFlags.None, broken.Token).ConfigureAwait(false);
                Break(new IOException(n == 0 ? "the receiver closed the connection" : "the receiver sent unexpected bytes"), clean: n == 0);
            }
            catch (OperationCanceledException)
            {
            }
            catch (Exception ex)
            {
                // A receiver that closed after its last operation often shows as a reset: also with grace.
                Break(ex, clean: true);
            }
        }

        /// <summary>Sends fail from now on; receives too, after a grace when the receiver closed cleanly (see SharedMemoryOutbound).</summary>
        private void Break(Exception ex, bool clean = false)
        {
            if (Interlocked.CompareExchange(ref this.fault, ex, null) is not null) return;
            try
            {
                if (clean) broken.CancelAfter(this.closeGrace);
                else broken.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
            try { this.socket.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        }

        public async ValueTask SendAsync(RingPiece piece, CancellationToken cancellationToken)
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
            if (Volatile.Read(ref this.fault) is { } fault) throw new IOException(fault.Message, fault);
            await writeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
            var writing = false;
            try
            {
                if (Volatile.Read(ref this.fault) is { } f) throw new IOException(f.Message, f);
                PieceFrame.Write(this.header, piece);
                if (this.sealer is not null)
                {
                    // Sealing advances the record sequence: from here a failure leaves the link unusable, like half a frame sent.
                    // Record by record (the header with the first), each written as soon as it is sealed: the receiver opens
                    // one while the next is sealed, and the buffer stays in cache.
                    writing = true;
                    sealedBuffer ??= GC.AllocateUninitializedArray<byte>(SealedRecords.Sealed(PieceFrame.Size) + SealedRecords.Sealed(SealedRecords.ChunkBytes));
                    var payload = piece.Bytes;
                    var length = this.sealer.Seal(SealedRecords.FrameHeader, this.header, sealedBuffer);
                    var done = 0;
                    do
                    {
                        var n = Math.Min(SealedRecords.ChunkBytes, payload.Length - done);
                        if (n > 0) length += this.sealer.Seal(SealedRecords.Payload, payload.Span.Slice(done, n), sealedBuffer.AsSpan(length));
                        await this.stream.WriteAsync(sealedBuffer.AsMemory(0, length), cancellationToken).ConfigureAwait(false);
                        done += n;
                        length = 0;
                    }
                    while (done < payload.Length);
                    return;
                }
                writing = true;
                await this.stream.WriteAsync(this.header, cancellationToken).ConfigureAwait(false);
                if (!piece.Bytes.IsEmpty) await this.stream.WriteAsync(piece.Bytes, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (writing)
            {
                // Half a frame may be on the wire: nothing more can go on this connection.
                Break(ex);
                if (ex is OperationCanceledException) throw;
                throw new IOException(Volatile.Read(ref this.fault)!.Message, ex);
            }
            finally
            {
                writeLock.Release();
            }
        }

        public async ValueTask DisposeAsync()
        {
            if (Interlocked.Exchange(ref disposed, 1) != 0) return;
            try
            {
                using var grace = new CancellationTokenSource(this.closeGrace);
                await writeLock.WaitAsync(grace.Token).ConfigureAwait(false);
                if (this.sealer is not null && Volatile.Read(ref this.fault) is null)
                {
                    // The close record: without it the receiver takes the end of the stream for a cut.
                    var close = new byte[SealedRecords.Sealed(0)];
                    this.sealer.Seal(SealedRecords.Close, [], close);
                    try { await this.stream.WriteAsync(close, grace.Token).ConfigureAwait(false); } catch (Exception e) when (e is IOException or ObjectDisposedException or SocketException) { }
                }
                try { this.socket.Shutdown(SocketShutdown.Send); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
            }
            catch (OperationCanceledException)
            {
            }
            Interlocked.CompareExchange(ref this.fault, new ObjectDisposedException(nameof(TcpLink), "the link was closed on this side"), null);
            try { await broken.CancelAsync().ConfigureAwait(false); } catch (ObjectDisposedException) { }
            await this.stream.DisposeAsync().ConfigureAwait(false);
            this.sealer?.Dispose();
        }
    }
}
