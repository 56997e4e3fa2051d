using System.Buffers;
using System.Buffers.Binary;
using System.Net.Security;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Dtrain.Rpc;

namespace Dtrain.Collective;

/// <summary>
/// Tensor bytes over one TCP connection per directed pair. The connection opens with a handshake (magic, job,
/// generation, sender rank, world size, and the one-time token the receiver handed out over the authenticated gRPC
/// <c>Hello</c>); the receiver answers with a status byte and a reason. Then frames: <see cref="PieceFrame"/> + the
/// piece's bytes, written straight from the caller's memory (no copy) and read into pooled buffers. With cluster TLS
/// the connection is an <see cref="SslStream"/> with the workers' certificates, each side pinned to the peer the
/// coordinator named.
/// </summary>
internal static class TcpLink
{
    private static readonly byte[] Magic = "DTRNTCP1"u8.ToArray();
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

    /// <summary>Connects, authenticates (TLS if <paramref name="tls"/>) and hands the connection over as an outbound link.</summary>
    public static async Task<IOutboundLink> ConnectAsync(string host, int port, string jobId, long generation, int rank, int worldSize, byte[] token,
        ClusterTls? tls, ExpectedPeer? expectedRight, CancellationToken cancellationToken)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        Stream? stream = null;
        var done = false;
        try
        {
            Tune(socket);
            await socket.ConnectAsync(host, port, cancellationToken).ConfigureAwait(false);
            stream = new NetworkStream(socket, ownsSocket: true);
            if (tls is not null)
            {
                var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
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
            var job = Encoding.UTF8.GetBytes(jobId);
            var hello = new byte[Magic.Length + 4 + job.Length + 8 + 4 + 4 + 4 + token.Length];
            var span = hello.AsSpan();
            Magic.CopyTo(span);
            var at = Magic.Length;
            BinaryPrimitives.WriteInt32LittleEndian(span[at..], job.Length); at += 4;
            job.CopyTo(span[at..]); at += job.Length;
            BinaryPrimitives.WriteInt64LittleEndian(span[at..], generation); at += 8;
            BinaryPrimitives.WriteInt32LittleEndian(span[at..], rank); at += 4;
            BinaryPrimitives.WriteInt32LittleEndian(span[at..], worldSize); at += 4;
            BinaryPrimitives.WriteInt32LittleEndian(span[at..], token.Length); at += 4;
            token.CopyTo(span[at..]);
            await stream.WriteAsync(hello, cancellationToken).ConfigureAwait(false);
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
            var link = new Outbound(socket, stream, tls is not null);
            done = true;
            return link;
        }
        finally
        {
            if (!done)
            {
                if (stream is not null) await stream.DisposeAsync().ConfigureAwait(false);
                socket.Dispose();
            }
        }
    }

    /// <summary>What the connecting side claims, read by the listener before it looks the ring up.</summary>
    public sealed record Claim(string JobId, long Generation, int Sender, int WorldSize, byte[] Token);

    public static async Task<Claim> ReadClaimAsync(Stream stream, CancellationToken cancellationToken)
    {
        var magic = new byte[Magic.Length + 4];
        await stream.ReadExactlyAsync(magic, cancellationToken).ConfigureAwait(false);
        if (!magic.AsSpan(0, Magic.Length).SequenceEqual(Magic)) throw new InvalidDataException("not a dtrain data-plane connection (bad magic)");
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
        var token = new byte[tokenLength];
        await stream.ReadExactlyAsync(token, cancellationToken).ConfigureAwait(false);
        return new Claim(job, generation, sender, world, token);
    }

    public static async Task AnswerAsync(Stream stream, string? refusal, CancellationToken cancellationToken)
    {
        var reason = refusal is null ? [] : Encoding.UTF8.GetBytes(refusal);
        var answer = new byte[5 + reason.Length];
        answer[0] = refusal is null ? (byte)0 : (byte)1;
        BinaryPrimitives.WriteInt32LittleEndian(answer.AsSpan(1), reason.Length);
        reason.CopyTo(answer, 5);
        await stream.WriteAsync(answer, cancellationToken).ConfigureAwait(false);
        await stream.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Reads frames with blocking reads (on a thread of its own; a stop closes the socket) until the sender closes or the connection breaks.</summary>
    public static void ReceiveBlocking(Socket socket, Stream stream, RingMailbox mailbox, int maxBytes, CancellationToken stop, Action<Exception>? failed = null)
    {
        using var closeOnStop = stop.Register(() => socket.Dispose());
        mailbox.AbortInbound = socket.Dispose;
        var header = new byte[PieceFrame.Size];
        byte[]? scratch = null;
        try
        {
            while (mailbox.ClosedReason is null)
            {
                var got = Fill(stream, header);
                if (got == 0) break;
                if (got < header.Length) throw new EndOfStreamException("the connection ended inside a frame header");
                var (tag, pieces, offset, length, shape) = PieceFrame.Read(header, maxBytes, mailbox.WorldSize, mailbox.Kind);
                if (shape is null && mailbox.TryClaim(tag, blockingRead: true) is { } landing)
                {
                    // Expected: read straight into place (a copy), or into this link's one scratch buffer and add from there.
                    try
                    {
                        if (landing.TakesDirect(offset, pieces, length))
                        {
                            if (Fill(stream, MemoryMarshal.AsBytes(landing.Destination.Span)) < length) throw new EndOfStreamException("the connection ended inside a frame");
                            landing.Complete();
                        }
                        else
                        {
                            scratch ??= new byte[maxBytes];
                            if (Fill(stream, scratch.AsSpan(0, length)) < length) throw new EndOfStreamException("the connection ended inside a frame");
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
                if (Fill(stream, buffer.AsSpan(0, length)) < length)
                {
                    owner.Dispose();
                    throw new EndOfStreamException("the connection ended inside a frame");
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
            stream.Dispose();
        }
    }

    /// <summary>Reads until <paramref name="buffer"/> is full or the peer closes; returns the bytes read.</summary>
    private static int Fill(Stream stream, Span<byte> buffer) => stream.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);

    private sealed class Pooled(byte[] buffer) : IDisposable
    {
        private byte[]? _buffer = buffer;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _buffer, null) is { } b) ArrayPool<byte>.Shared.Return(b);
        }
    }

    /// <summary>The sending end: one writer at a time; a watcher notices the receiver closing or dying while we are idle.</summary>
    private sealed class Outbound : IOutboundLink
    {
        private readonly Socket _socket;
        private readonly Stream _stream;
        private readonly SemaphoreSlim _writeLock = new(1, 1);
        private readonly byte[] _header = new byte[PieceFrame.Size];
        private readonly CancellationTokenSource _broken = new();
        private Exception? _fault;
        private int _disposed;

        public Outbound(Socket socket, Stream stream, bool tls)
        {
            _socket = socket;
            _stream = stream;
            Kind = DataTransports.Describe(DataTransport.Tcp, tls);
            _ = WatchAsync();
        }

        public string Kind { get; }

        public CancellationToken Broken => _broken.Token;

        public Exception? Fault => Volatile.Read(ref _fault);

        private async Task WatchAsync()
        {
            // The receiver never writes after the handshake: a read that returns means it closed or the connection broke.
            var one = new byte[1];
            try
            {
                var n = _stream is SslStream
                    ? await _stream.ReadAsync(one, _broken.Token).ConfigureAwait(false)
                    : await _socket.ReceiveAsync(one, SocketFlags.None, _broken.Token).ConfigureAwait(false);
                Break(new IOException(n == 0 ? "the receiver closed the connection" : "the receiver sent unexpected bytes"), clean: n == 0);
            }
            catch (OperationCanceledException)
            {
            }
            catch (Exception ex)
            {
                // A TLS receiver that closed after its last operation often shows as a reset: also with grace.
                Break(ex, clean: true);
            }
        }

        /// <summary>Sends fail from now on; receives too, after a grace when the receiver closed cleanly (see SharedMemoryOutbound).</summary>
        private void Break(Exception ex, bool clean = false)
        {
            if (Interlocked.CompareExchange(ref _fault, ex, null) is not null) return;
            try
            {
                if (clean) _broken.CancelAfter(SharedMemoryRing.CleanCloseGrace);
                else _broken.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
            try { _socket.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        }

        public async ValueTask SendAsync(RingPiece piece, CancellationToken cancellationToken)
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
            if (Volatile.Read(ref _fault) is { } fault) throw new IOException(fault.Message, fault);
            await _writeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
            var writing = false;
            try
            {
                if (Volatile.Read(ref _fault) is { } f) throw new IOException(f.Message, f);
                PieceFrame.Write(_header, piece);
                writing = true;
                await _stream.WriteAsync(_header, cancellationToken).ConfigureAwait(false);
                if (!piece.Bytes.IsEmpty) await _stream.WriteAsync(piece.Bytes, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (writing)
            {
                // Half a frame may be on the wire: nothing more can go on this connection.
                Break(ex);
                if (ex is OperationCanceledException) throw;
                throw new IOException(Volatile.Read(ref _fault)!.Message, ex);
            }
            finally
            {
                _writeLock.Release();
            }
        }

        public async ValueTask DisposeAsync()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
            try
            {
                using var grace = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                await _writeLock.WaitAsync(grace.Token).ConfigureAwait(false);
                if (_stream is SslStream ssl && Volatile.Read(ref _fault) is null)
                {
                    try { await ssl.ShutdownAsync().WaitAsync(grace.Token).ConfigureAwait(false); } catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException) { }
                }
                try { _socket.Shutdown(SocketShutdown.Send); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
            }
            catch (OperationCanceledException)
            {
            }
            Interlocked.CompareExchange(ref _fault, new ObjectDisposedException(nameof(TcpLink), "the link was closed on this side"), null);
            try { await _broken.CancelAsync().ConfigureAwait(false); } catch (ObjectDisposedException) { }
            await _stream.DisposeAsync().ConfigureAwait(false);
        }
    }
}
