using Dtrain.Collective;

namespace Dtrain.Tests.Collective;

/// <summary>
/// Pieces that land in place (<see cref="RingLanding"/>): the ring's sums are the same bits as when the operation takes
/// the pieces one by one, and a mailbox lands a piece however it comes (before or after it was expected, from a
/// delivering link or a reader's claim), refuses one that does not fit, and never writes into memory it gave back.
/// </summary>
public class RingLandingTests
{
    public static TheoryData<int, RingCompression> Worlds => new()
    {
        { 2, RingCompression.None }, { 3, RingCompression.None }, { 4, RingCompression.None }, { 5, RingCompression.None },
        { 3, RingCompression.Fp16 }, { 4, RingCompression.Bf16 },
    };

    [Theory]
    [MemberData(nameof(Worlds))]
    public async Task Landed_sums_are_bit_identical_to_sums_received_piece_by_piece(int world, RingCompression compression)
    {
        const int length = 10_007, piece = 333;
        var inputs = RingAllReduceTests.RandomBuffers(world, length, seed: 40 + world);
        async Task<float[][]> SumAsync(bool landings)
        {
            var buffers = inputs.Select(b => (float[])b.Clone()).ToArray();
            var transports = InMemoryRingTransport.CreateRing(world, landings);
            try
            {
                for (var op = 0; op < 3; op++)
                    await Task.WhenAll(transports.Select((t, rank) => new RingAllReduce(t, piece, TimeSpan.FromSeconds(30)).SumAsync(buffers[rank], op, compression)));
            }
            finally
            {
                foreach (var t in transports) await t.DisposeAsync();
            }
            return buffers;
        }
        var byPiece = await SumAsync(landings: false);
        var landed = await SumAsync(landings: true);
        for (var rank = 0; rank < world; rank++)
        {
            RingAllReduceTests.AssertBitIdentical(byPiece[rank], landed[rank]);
            RingAllReduceTests.AssertBitIdentical(landed[0], landed[rank]);
        }
        // It summed: three rounds of W ranks grow the values, far from the inputs.
        Assert.NotEqual(inputs[0][0], landed[0][0]);
    }

    [Fact]
    public async Task Ranks_with_different_buffer_lengths_fail_naming_the_layout_when_pieces_land()
    {
        var transports = InMemoryRingTransport.CreateRing(2, landings: true);
        var a = new RingAllReduce(transports[0], 4, TimeSpan.FromSeconds(5)).SumAsync(new float[10], 1);
        var b = new RingAllReduce(transports[1], 4, TimeSpan.FromSeconds(5)).SumAsync(new float[12], 1);
        var errors = new[] { await Assert.ThrowsAnyAsync<CollectiveException>(() => a), await Assert.ThrowsAnyAsync<CollectiveException>(() => b) };
        Assert.Contains(errors, e => e.Message.Contains("same buffer length", StringComparison.Ordinal) && e is not CollectiveTimeoutException);
        foreach (var t in transports) await t.DisposeAsync();
    }

    static RingMailbox Mailbox()
    {
        var mailbox = new RingMailbox("job", 1, rank: 1, worldSize: 2);
        Assert.True(mailbox.TryAttachInbound());
        return mailbox;
    }

    static RingTag Tag(int piece) => new(7, 0, 0, piece);

    static RingPiece Piece(int piece, long offset, params float[] values) =>
        RingPiece.CopyOf(Tag(piece), offset, 2, System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()));

    static Func<Exception, Exception> Wrap => e => new RingTransportException("wrapped: " + e.Message, 0, "rank 0", e);

    [Fact]
    public void A_piece_lands_whether_it_came_before_or_after_it_was_expected_adding_or_copying()
    {
        var mailbox = Mailbox();
        var buffer = new float[] { 1, 1, 1, 1 };
        mailbox.Deliver(Piece(0, 0, 10, 20));   // before: kept, landed by Expect
        var first = new RingLanding(Tag(0), 0, 2, buffer.AsMemory(0, 2), add: true);
        var second = new RingLanding(Tag(1), 2, 2, buffer.AsMemory(2, 2), add: false);
        mailbox.Expect([first, second], Wrap);
        Assert.True(first.Landed.IsCompletedSuccessfully);
        Assert.False(second.Landed.IsCompleted);
        mailbox.Deliver(Piece(1, 2, 30, 40));   // after: landed by the delivering thread
        Assert.True(second.Landed.IsCompletedSuccessfully);
        Assert.Equal([11f, 21f, 30f, 40f], buffer);
    }

    [Fact]
    public async Task A_piece_that_does_not_fit_fails_its_landing_and_leaves_the_memory_alone()
    {
        var mailbox = Mailbox();
        var buffer = new float[] { 1, 1 };
        var landing = new RingLanding(Tag(0), 0, 2, buffer, add: true);
        mailbox.Expect([landing], Wrap);
        mailbox.Deliver(Piece(0, 0, 10, 20, 30));   // three values where two are expected
        var ex = await Assert.ThrowsAsync<RingLandingMismatchException>(() => landing.Landed);
        Assert.Equal(12, ex.Bytes);
        Assert.Contains("expected [0, +2 values = 8 bytes)", ex.Message, StringComparison.Ordinal);
        Assert.Equal([1f, 1f], buffer);
    }

    [Fact]
    public async Task Taken_back_landings_are_never_written_and_a_later_piece_waits_in_the_mailbox()
    {
        var mailbox = Mailbox();
        var buffer = new float[] { 1, 1 };
        var landing = new RingLanding(Tag(0), 0, 2, buffer, add: false);
        mailbox.Expect([landing], Wrap);
        mailbox.Revoke([landing]);
        await Assert.ThrowsAsync<OperationCanceledException>(() => landing.Landed);
        mailbox.Deliver(Piece(0, 0, 10, 20));
        Assert.Equal([1f, 1f], buffer);
        using var kept = await mailbox.ReceiveAsync(Tag(0), Wrap, CancellationToken.None);
        Assert.Equal([10f, 20f], kept.Values.ToArray());
    }

    [Fact]
    public async Task Taking_back_a_landing_a_reader_is_reading_into_breaks_the_link_and_waits_for_the_reader()
    {
        var mailbox = Mailbox();
        var buffer = new float[2];
        var landing = new RingLanding(Tag(0), 0, 2, buffer, add: false);
        mailbox.Expect([landing], Wrap);
        var aborted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        mailbox.AbortInbound = () => aborted.TrySetResult();
        var claimed = mailbox.TryClaim(Tag(0), blockingRead: true);
        Assert.Same(landing, claimed);
        var revoke = Task.Run(() => mailbox.Revoke([landing]));
        await aborted.Task.WaitAsync(TimeSpan.FromSeconds(10));   // the reader's socket would be closed here
        await Task.Delay(100);
        Assert.False(revoke.IsCompleted, "Revoke returned while the reader still held the landing");
        mailbox.Fail(landing, new IOException("socket closed"));
        mailbox.Release(landing);
        await revoke.WaitAsync(TimeSpan.FromSeconds(10));
        var ex = await Assert.ThrowsAsync<RingTransportException>(() => landing.Landed);
        Assert.Contains("socket closed", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_landing_whose_piece_has_landed_is_not_a_reason_to_break_the_link()
    {
        var mailbox = Mailbox();
        var landing = new RingLanding(Tag(0), 0, 2, new float[2], add: false);
        mailbox.Expect([landing], Wrap);
        var aborts = 0;
        mailbox.AbortInbound = () => aborts++;
        Assert.Same(landing, mailbox.TryClaim(Tag(0), blockingRead: true));
        landing.Complete();   // the reader finished; its release is still to come
        mailbox.Revoke([landing]);
        Assert.Equal(0, aborts);
        await landing.Landed;
    }

    [Fact]
    public void Expecting_a_piece_already_expected_is_refused_and_registers_none_of_the_others()
    {
        var mailbox = Mailbox();
        mailbox.Expect([new RingLanding(Tag(0), 0, 2, new float[2], add: false)], Wrap);
        var other = new float[] { 1, 1 };
        var ex = Assert.Throws<InvalidOperationException>(() => mailbox.Expect([new RingLanding(Tag(1), 2, 2, other, add: false), new RingLanding(Tag(0), 0, 2, new float[2], add: false)], Wrap));
        Assert.Contains("already being received", ex.Message, StringComparison.Ordinal);
        mailbox.Deliver(Piece(1, 2, 30, 40));
        Assert.Equal([1f, 1f], other);
    }

    [Fact]
    public async Task Closing_or_ending_the_inbound_stream_fails_pending_landings_with_the_transports_error()
    {
        var mailbox = Mailbox();
        var landing = new RingLanding(Tag(0), 0, 2, new float[2], add: false);
        mailbox.Expect([landing], Wrap);
        mailbox.CompleteInbound(new IOException("reset"));
        var ex = await Assert.ThrowsAsync<RingTransportException>(() => landing.Landed);
        Assert.Contains("wrapped: stream from left neighbour rank 0 broke: reset", ex.Message, StringComparison.Ordinal);

        // Expected after the stream ended: fails at once.
        var late = new RingLanding(Tag(1), 2, 2, new float[2], add: false);
        mailbox.Expect([late], Wrap);
        await Assert.ThrowsAsync<RingTransportException>(() => late.Landed);

        var closed = Mailbox();
        var pending = new RingLanding(Tag(0), 0, 2, new float[2], add: false);
        closed.Expect([pending], Wrap);
        closed.Close(new ObjectDisposedException("ring"));
        await Assert.ThrowsAsync<RingTransportException>(() => pending.Landed);
    }
}
