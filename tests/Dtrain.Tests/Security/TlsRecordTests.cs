using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Dtrain.Collective;
using Dtrain.Protos.Collective;
using Dtrain.Rpc;
using CollectiveGrpc = Dtrain.Protos.Collective.Collective;

namespace Dtrain.Tests.Security;

/// <summary>
/// The records of a tcp+tls link after its mutual-TLS handshake, attacked on the wire: a proxy between the sending
/// worker and a real receiving worker passes the TLS handshake through and then alters, replays, reorders or cuts the
/// sealed records. The receiver refuses each (its link closes with a reason naming the record), the bytes on the wire
/// are not the tensor's, and the untouched stream arrives exactly. Also: the sender refuses a receiver that is not
/// the worker it was told to expect.
/// </summary>
public class TlsRecordTests
{
    /// <summary>What the proxy does with the sealed record number i (0-based): the byte arrays to pass on, and whether to cut the connection after them.</summary>
    delegate (byte[][] Emit, bool Cut) Plan(int index, byte[] record);

    /// <summary>
    /// A TCP proxy for one connection: receiver-to-sender bytes pass unchanged; sender-to-receiver, the TLS records of
    /// the handshake pass unchanged (first byte 20-23), then each sealed record (24-byte head + its length) goes through
    /// <see cref="Plan"/>. Everything the sender sent after the handshake is kept in <see cref="Sealed"/>.
    /// </summary>
    sealed class RecordProxy : IAsyncDisposable
    {
        private readonly TcpListener listener = new(IPAddress.Loopback, 0);
        private readonly Task run;
        private readonly List<IDisposable> owned = [];

        public RecordProxy(int target, Plan plan)
        {
            listener.Start();
            run = RunAsync(target, plan);
        }

        public int Port => ((IPEndPoint)listener.LocalEndpoint).Port;

        public MemoryStream Sealed { get; } = new();

        private async Task RunAsync(int target, Plan plan)
        {
            var client = await listener.AcceptTcpClientAsync();
            var server = new TcpClient();
            lock (owned) owned.AddRange([client, server]);
            await server.ConnectAsync(IPAddress.Loopback, target);
            var fromClient = client.GetStream();
            var toServer = server.GetStream();
            var (clientSocket, serverSocket) = (client.Client, server.Client);
            var back = Task.Run(async () =>
            {
                try { await server.GetStream().CopyToAsync(fromClient); } catch (IOException) { } catch (ObjectDisposedException) { }
                try { clientSocket.Shutdown(SocketShutdown.Send); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
            });
            try
            {
                var index = 0;
                while (true)
                {
                    var first = new byte[1];
                    if (await fromClient.ReadAtLeastAsync(first, 1, throwOnEndOfStream: false) == 0) break;
                    if (first[0] is >= 20 and <= 23)
                    {
                        var head = new byte[5];
                        head[0] = first[0];
                        await fromClient.ReadExactlyAsync(head.AsMemory(1));
                        var body = new byte[BinaryPrimitives.ReadUInt16BigEndian(head.AsSpan(3))];
                        await fromClient.ReadExactlyAsync(body);
                        await toServer.WriteAsync(head);
                        await toServer.WriteAsync(body);
                        continue;
                    }
                    var record = new byte[SealedRecords.HeadBytes];
                    record[0] = first[0];
                    await fromClient.ReadExactlyAsync(record.AsMemory(1));
                    var length = BinaryPrimitives.ReadInt32LittleEndian(record.AsSpan(4));
                    Array.Resize(ref record, SealedRecords.HeadBytes + length);
                    await fromClient.ReadExactlyAsync(record.AsMemory(SealedRecords.HeadBytes));
                    Sealed.Write(record);
                    var (emit, cut) = plan(index++, record);
                    foreach (var bytes in emit) await toServer.WriteAsync(bytes);
                    if (cut) break;
                }
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or EndOfStreamException)
            {
            }
            try { serverSocket.Shutdown(SocketShutdown.Send); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
            await back;
        }

        /// <summary>Waits for both directions to end (the sender closes its link before this), then lets the sockets go.</summary>
        public async ValueTask DisposeAsync()
        {
            listener.Stop();
            try { await run; } catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException) { }
            lock (owned) foreach (var o in owned) o.Dispose();
        }
    }

    /// <summary>Pieces of 3 x 256K floats (the receiver accepts pieces this large): each frame is a header record and three payload records of 1 MiB.</summary>
    const int Floats = 3 * SealedRecords.ChunkBytes / sizeof(float);

    static float[] Values(int frame)
    {
        var random = new Random(frame);
        var values = new float[Floats];
        for (var i = 0; i < values.Length; i++) values[i] = random.NextSingle() + frame;
        return values;
    }

    static RingTag Tag(int frame) => new(frame, 0, 0, 0);

    /// <summary>
    /// w0 opens a tcp+tls link to w1 through a proxy running <paramref name="plan"/>, sends <paramref name="frames"/>
    /// frames and closes; returns what w1 received in order (stopping at the first refusal, with its message) and the
    /// sealed bytes the proxy saw.
    /// </summary>
    /// With <paramref name="landInto"/>, frame f is expected straight into landInto[f] (a copy landing, as the ring's
    /// all-gather takes its pieces) instead of arriving in the mailbox.
    static async Task<(List<float[]> Received, string? Refusal, byte[] Wire)> SendThroughAsync(Plan plan, int frames = 3, bool close = true, float[][]? landInto = null)
    {
        using var pki = new TestPki();
        using var w0 = new TlsWorker(pki, "w0");
        using var w1 = new TlsWorker(pki, "w1");
        // Pieces of three records (a ring piece is one: SealedRecords.ChunkBytes), so that records can be moved within a frame.
        w1.App = await TlsHosts.StartAsync(new ServerSecurity(w1.Own(), AccessPolicy.Worker()), b => b.Services.AddDtrainCollective(Floats), a => a.MapDtrainCollective());
        try
        {
            w1.Plane.Tls = w1.Own();
            var mailbox = w1.Plane.Mailboxes.Register("job", 1, 1, 2, w0.Expected);
            var landings = landInto?.Select((values, f) => new RingLanding(Tag(f), 0, 1, values, add: false)).ToArray();
            if (landings is not null) mailbox.Expect(landings, e => e);
            DataPlaneOffer offer;
            using (var channel = pki.Channel(w1.Address, w0.Certificate, w1.Expected))
                offer = await new CollectiveGrpc.CollectiveClient(channel).HelloAsync(new DataPlaneHello { JobId = "job", Generation = 1, SenderRank = 0, WorldSize = 2 });
            await using var proxy = new RecordProxy(offer.TcpPort, plan);
            var link = await TcpLink.ConnectAsync("127.0.0.1", proxy.Port, "job", 1, 0, 2, offer.Token.ToByteArray(), w0.Own(), w1.Expected, CancellationToken.None);
            Assert.Equal("tcp+tls", link.Kind);
            try
            {
                for (var f = 0; f < frames; f++)
                {
                    try
                    {
                        await link.SendAsync(RingPiece.Borrow(Tag(f), 0, 1, Values(f)), CancellationToken.None);
                    }
                    catch (IOException)
                    {
                        break;   // the receiver already closed the link
                    }
                }
            }
            finally
            {
                if (close) await link.DisposeAsync();
            }
            var received = new List<float[]>();
            string? refusal = null;
            using var patience = new CancellationTokenSource(TimeSpan.FromMinutes(2));
            for (var f = 0; f < frames + 1 && refusal is null; f++)
            {
                try
                {
                    if (landings is not null && f < frames)
                    {
                        await landings[f].Landed.WaitAsync(patience.Token);
                        received.Add(landInto![f]);
                        continue;
                    }
                    using var piece = await mailbox.ReceiveAsync(Tag(f), e => e, patience.Token);
                    received.Add(MemoryMarshal.Cast<byte, float>(piece.Bytes.Span).ToArray());
                }
                catch (Exception e) when (e is IOException or EndOfStreamException)
                {
                    refusal = e.Message;
                }
            }
            if (!close) await link.DisposeAsync();
            await proxy.DisposeAsync();
            return (received, refusal, proxy.Sealed.ToArray());
        }
        finally
        {
            await w1.App.DisposeAsync();
        }
    }

    static (byte[][], bool) Pass(byte[] record) => ([record], false);

    /// <summary>Three frames' destinations, every value -1 (so that what lands, and what is cleared, shows).</summary>
    static float[][] Filled() => Enumerable.Range(0, 3).Select(_ => Enumerable.Repeat(-1f, Floats).ToArray()).ToArray();

    static void AssertFrames(List<float[]> received, int count)
    {
        Assert.Equal(count, received.Count);
        for (var f = 0; f < count; f++) Assert.Equal(Values(f), received[f]);
    }

    [Fact]
    public async Task Untouched_records_arrive_exactly_the_wire_carries_no_tensor_bytes_and_a_close_record_ends_the_stream()
    {
        var (received, refusal, wire) = await SendThroughAsync((_, r) => Pass(r));
        AssertFrames(received, 3);
        Assert.Contains("closed its stream", refusal, StringComparison.Ordinal);
        // 3 frames x (header + 3 payload records) + the close record, all sealed.
        Assert.Equal(3 * (SealedRecords.Sealed(PieceFrame.Size) + 3 * SealedRecords.Sealed(SealedRecords.ChunkBytes)) + SealedRecords.Sealed(0), wire.Length);
        for (var f = 0; f < 3; f++)
        {
            var plain = MemoryMarshal.AsBytes(Values(f).AsSpan());
            for (var at = 0; at + 64 <= plain.Length; at += 64 * 1024)
                Assert.True(wire.AsSpan().IndexOf(plain.Slice(at, 64)) < 0, $"frame {f}: 64 bytes of the tensor at byte {at} are on the wire in the clear");
        }
    }

    [Fact]
    public async Task A_record_altered_on_the_way_is_refused_and_the_link_closes()
    {
        // Record 5 (0-based) = the first payload record of frame 1: one bit flipped in its ciphertext.
        var (received, refusal, _) = await SendThroughAsync((i, r) =>
        {
            if (i == 5) r[SealedRecords.HeadBytes + 1000] ^= 0x01;
            return Pass(r);
        });
        AssertFrames(received, 1);
        Assert.Contains("left neighbour rank 0 broke", refusal, StringComparison.Ordinal);
        Assert.Contains("record 6 (payload, 1048576 bytes) failed authentication", refusal, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Records_landing_straight_into_place_arrive_exactly_and_an_altered_one_leaves_zeros_not_its_bytes()
    {
        // Frames expected as the ring's all-gather expects them: each record opened from the link's buffer into place.
        var (received, refusal, _) = await SendThroughAsync((_, r) => Pass(r), landInto: Filled());
        AssertFrames(received, 3);
        Assert.Contains("closed its stream", refusal, StringComparison.Ordinal);

        // Record 5 = frame 1's first payload record (its first 1 MiB): one bit flipped in its ciphertext.
        var into = Filled();
        (received, refusal, _) = await SendThroughAsync((i, r) =>
        {
            if (i == 5) r[SealedRecords.HeadBytes + 1000] ^= 0x01;
            return Pass(r);
        }, landInto: into);
        AssertFrames(received, 1);
        Assert.Contains("record 6 (payload, 1048576 bytes) failed authentication", refusal, StringComparison.Ordinal);
        var perRecord = SealedRecords.ChunkBytes / sizeof(float);
        Assert.All(into[1].AsSpan(0, perRecord).ToArray(), v => Assert.Equal(0f, v));   // cleared: no unauthenticated plaintext
        Assert.All(into[1].AsSpan(perRecord).ToArray(), v => Assert.Equal(-1f, v));     // the records after it never came
        Assert.All(into[2], v => Assert.Equal(-1f, v));
    }

    [Fact]
    public async Task An_altered_record_head_is_refused()
    {
        // The associated data: the type byte of frame 1's first payload record says it is a frame header.
        var (received, refusal, _) = await SendThroughAsync((i, r) =>
        {
            if (i == 5) r[0] = SealedRecords.FrameHeader;
            return Pass(r);
        });
        AssertFrames(received, 1);
        Assert.Contains("a frame header record where a payload record was due", refusal, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_replayed_frame_is_refused()
    {
        // After frame 0 (records 0-3), its four records again, exactly as they were sent: where frame 1 was due.
        var kept = new List<byte[]>();
        var (received, refusal, _) = await SendThroughAsync((i, r) =>
        {
            if (i < 4) kept.Add((byte[])r.Clone());
            return i == 3 ? ([r, .. kept], false) : Pass(r);
        });
        AssertFrames(received, 1);
        Assert.Contains("record 5 (frame header, 72 bytes) failed authentication", refusal, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Two_frames_swapped_are_refused()
    {
        // Frames 1 (records 4-7) and 2 (records 8-11) change places: same types and sizes, only the sequence differs.
        var held = new List<byte[]>();
        var (received, refusal, _) = await SendThroughAsync((i, r) =>
        {
            if (i is >= 4 and <= 7)
            {
                held.Add(r);
                return ([], false);
            }
            return i == 11 ? ([r, .. held], false) : Pass(r);
        });
        AssertFrames(received, 1);
        Assert.Contains("record 5 (frame header, 72 bytes) failed authentication", refusal, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_stream_cut_between_records_is_refused_not_taken_for_a_close()
    {
        // The connection ends after frame 1: the sender's close record never arrives.
        var (received, refusal, _) = await SendThroughAsync((i, r) => i == 7 ? ([r], true) : Pass(r));
        AssertFrames(received, 2);
        Assert.Contains("ended without the sender's close record", refusal, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_stream_cut_inside_a_record_is_refused()
    {
        var (received, refusal, _) = await SendThroughAsync((i, r) => i == 6 ? ([r[..(r.Length / 2)]], true) : Pass(r));
        AssertFrames(received, 1);
        Assert.Contains("the connection ended inside a record", refusal, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_sender_refuses_a_receiver_that_is_not_the_worker_it_expects()
    {
        using var pki = new TestPki();
        using var w0 = new TlsWorker(pki, "w0");
        using var w1 = new TlsWorker(pki, "w1");
        using var w2 = new TlsWorker(pki, "w2");
        w1.App = await TlsHosts.StartAsync(new ServerSecurity(w1.Own(), AccessPolicy.Worker()), b => b.Services.AddDtrainCollective(), a => a.MapDtrainCollective());
        try
        {
            w1.Plane.Tls = w1.Own();
            w1.Plane.Mailboxes.Register("job", 1, 1, 2, w0.Expected);
            // w0 was told its right neighbour is w2; w1 (a worker of the same cluster) answers: no byte of the claim goes out.
            var refused = await Assert.ThrowsAsync<System.Security.Authentication.AuthenticationException>(() =>
                TcpLink.ConnectAsync("127.0.0.1", w1.Plane.TcpPort, "job", 1, 0, 2, new byte[32], w0.Own(), w2.Expected, CancellationToken.None));
            Assert.Contains("remote certificate", refused.Message, StringComparison.OrdinalIgnoreCase);
        }
        finally
        {
            await w1.App.DisposeAsync();
        }
    }
}

/// <summary>The record layer alone: the key ratchet keeps both ends in step, and a record sealed under one key does not open under the next.</summary>
public class SealedRecordsTests
{
    [Fact]
    public void A_ring_piece_is_one_record_and_no_key_protects_more_than_2_to_the_38_bytes()
    {
        // One payload record per piece of the ring (one cipher call, one write, one read per MiB), and the ratchet
        // scaled with the record size so that a key still seals at most 2^38 bytes (the margin kept from the AES-GCM records).
        Assert.Equal(RingAllReduce.DefaultMaxPieceFloats * sizeof(float), SealedRecords.ChunkBytes);
        Assert.Equal(1L << 38, SealedRecords.RecordsPerKey * SealedRecords.ChunkBytes);
    }

    [Fact]
    public void The_key_ratchets_every_N_records_on_both_ends_and_old_records_do_not_open_under_the_new_key()
    {
        var secret = RandomNumberGenerator.GetBytes(32);
        using var sealer = new SealedRecords.Sealer(secret, recordsPerKey: 3);
        using var opener = new SealedRecords.Opener(secret, recordsPerKey: 3);
        var records = new List<byte[]>();
        for (var i = 0; i < 10; i++)
        {
            var plain = new byte[100 + i];
            plain.AsSpan().Fill((byte)i);
            var record = new byte[SealedRecords.Sealed(plain.Length)];
            sealer.Seal(SealedRecords.Payload, plain, record);
            records.Add(record);
        }
        // Records 0-2 under key 0, 3-5 under key 1 ...: the same nonces (sequence 0, 1, 2) recur, under different keys.
        Assert.NotEqual(records[0].AsSpan(SealedRecords.HeadBytes, 50).ToArray(), records[3].AsSpan(SealedRecords.HeadBytes, 50).ToArray());
        for (var i = 0; i < 3; i++) Open(opener, records[i], i);
        // Record 0 again where record 3 (sequence 0 of key 1) is due: refused.
        Assert.Throws<InvalidDataException>(() => opener.Open(records[0], records[0].AsSpan(SealedRecords.HeadBytes).ToArray()));
        using var fresh = new SealedRecords.Opener(secret, recordsPerKey: 3);
        for (var i = 0; i < 10; i++) Open(fresh, records[i], i);
    }

    [Fact]
    public unsafe void Records_are_AEGIS_128X2_under_the_key_and_IV_HKDF_gives_with_the_nonce_IV_xor_sequence()
    {
        // The suite as docs/cluster.md states it, checked through the AEGIS-128X2 primitive itself (which
        // Aegis128X2Tests checks against the draft's test vectors): key = HKDF-Expand(secret, "... key", 16),
        // iv = HKDF-Expand(secret, "... iv", 16), record n's nonce = iv XOR n (big-endian, in the last 8 bytes), the 8-byte
        // head the associated data, the 32-byte tag after it.
        var secret = RandomNumberGenerator.GetBytes(32);
        using var sealer = new SealedRecords.Sealer(secret);
        static byte[] Info(string what) => System.Text.Encoding.ASCII.GetBytes("dtrain tcp+tls records v4 aegis128x2 " + what);
        var key = HKDF.Expand(HashAlgorithmName.SHA256, secret, 16, Info("key"));
        var iv = HKDF.Expand(HashAlgorithmName.SHA256, secret, 16, Info("iv"));
        Assert.Equal(SealedRecords.HeadBytes, 8 + 32);
        for (var n = 0; n < 3; n++)
        {
            var plain = RandomNumberGenerator.GetBytes(1000 + n);
            var record = new byte[SealedRecords.Sealed(plain.Length)];
            Assert.Equal(record.Length, sealer.Seal(SealedRecords.Payload, plain, record));
            var nonce = (byte[])iv.Clone();
            BinaryPrimitives.WriteUInt64BigEndian(nonce.AsSpan(8), BinaryPrimitives.ReadUInt64BigEndian(iv.AsSpan(8)) ^ (ulong)n);
            var opened = new byte[plain.Length];
            int result;
            fixed (byte* m = opened, c = record.AsSpan(SealedRecords.HeadBytes), t = record.AsSpan(8, 32), a = record.AsSpan(0, 8), nn = nonce, k = key)
                result = SealedRecords.Native.dtrain_aegis128x2_decrypt(m, c, (nuint)plain.Length, t, a, 8, nn, k);
            Assert.True(result == 0, $"record {n} does not open as AEGIS-128X2 ({result})");
            Assert.Equal(plain, opened);
        }
    }

    [Fact]
    public void Ends_of_different_key_sizes_do_not_understand_each_other_and_AEGIS_256_still_round_trips()
    {
        // dtrain-bench's tcp+tls256 rows seal with AEGIS-256 on both ends; an end that does not agree refuses the first record.
        var secret = RandomNumberGenerator.GetBytes(32);
        var plain = RandomNumberGenerator.GetBytes(4096);
        byte[] SealOne(int keyBytes)
        {
            using var sealer = new SealedRecords.Sealer(secret, keyBytes: keyBytes);
            var record = new byte[SealedRecords.Sealed(plain.Length)];
            sealer.Seal(SealedRecords.Payload, plain, record);
            return record;
        }
        var aes128 = SealOne(16);
        var aes256 = SealOne(32);
        using (var opener = new SealedRecords.Opener(secret, keyBytes: 32))
        {
            var data = aes128.AsSpan(SealedRecords.HeadBytes).ToArray();
            var e = Assert.Throws<InvalidDataException>(() => opener.Open(aes128, data));
            Assert.Contains("failed authentication", e.Message, StringComparison.Ordinal);
        }
        using (var opener = new SealedRecords.Opener(secret, keyBytes: 32))
        {
            var data = aes256.AsSpan(SealedRecords.HeadBytes).ToArray();
            opener.Open(aes256, data);
            Assert.Equal(plain, data);
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => new SealedRecords.Sealer(secret, keyBytes: 24));
        Assert.Throws<ArgumentOutOfRangeException>(() => SealedRecords.KeyBytes = 24);
        Assert.Equal(SealedRecords.DefaultKeyBytes, SealedRecords.KeyBytes);
    }

    [Fact]
    public async Task A_claim_from_a_build_that_sealed_AES_GCM_AEGIS_128L_or_256_KiB_records_is_refused_as_another_version()
    {
        // Its records would fail authentication one by one as if tampered with (AES-256-GCM: DTRNTCP2; AES-128-GCM with
        // 1 MiB records: DTRNTCP4; AEGIS-128L: DTRNTCP5), or be refused as too large (256 KiB records: DTRNTCP3); its magic
        // says what it is.
        var claim = new TcpLink.Claim("job", 1, 0, 2, RandomNumberGenerator.GetBytes(32)).Encode();
        Assert.Equal("DTRNTCP6"u8.ToArray(), claim[..8]);
        await TcpLink.ReadClaimAsync(new MemoryStream(claim), CancellationToken.None);
        foreach (var earlier in new[] { "DTRNTCP2"u8.ToArray(), "DTRNTCP3"u8.ToArray(), "DTRNTCP4"u8.ToArray(), "DTRNTCP5"u8.ToArray() })
        {
            earlier.CopyTo(claim, 0);
            var e = await Assert.ThrowsAsync<InvalidDataException>(() => TcpLink.ReadClaimAsync(new MemoryStream(claim), CancellationToken.None));
            Assert.Contains("not a dtrain data-plane connection of this version", e.Message, StringComparison.Ordinal);
        }
    }

    static void Open(SealedRecords.Opener opener, byte[] record, int i)
    {
        var (type, length) = opener.Check(record, SealedRecords.Payload, 1000, orClose: false);
        Assert.Equal((SealedRecords.Payload, 100 + i), (type, length));
        var data = record.AsSpan(SealedRecords.HeadBytes).ToArray();
        opener.Open(record, data);
        Assert.All(data, b => Assert.Equal((byte)i, b));
    }
}
