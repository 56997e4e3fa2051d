using Dtrain.Collective;
using Dtrain.Distributed;

namespace Dtrain.Tests.Observability;

/// <summary>The worker-side tracker and the ring's progress observer (in-memory ring: the algorithm, not the network).</summary>
public class WorkerActivityTests
{
    [Fact]
    public void A_step_that_ends_after_its_job_was_released_leaves_the_worker_idle()
    {
        // `workers` showed an idle worker "waiting for data step 401" after a cancel: the step's end came after the release.
        var activity = new WorkerActivity();
        activity.Job("job-0001");
        activity.EnterFor("job-0001", ActivityPhases.WaitingForData, "step 2 from the coordinator");
        Assert.Equal(ActivityPhases.WaitingForData, activity.Snapshot().Phase);
        activity.Job("");
        activity.EnterFor("job-0001", ActivityPhases.WaitingForData, "step 401 from the coordinator");
        Assert.Equal(ActivityPhases.Idle, activity.Snapshot().Phase);
        Assert.Equal("", activity.Snapshot().Detail);
        // Another job's late step changes nothing either.
        activity.Job("job-0002");
        activity.EnterFor("job-0001", ActivityPhases.WaitingForData, "step 3 from the coordinator");
        Assert.NotEqual(ActivityPhases.WaitingForData, activity.Snapshot().Phase);
    }

    [Fact]
    public async Task The_ring_reports_every_piece_it_waits_for_with_the_left_neighbour_as_the_peer()
    {
        const int world = 3, length = 30, piece = 4;   // chunks of 10 floats: 3 pieces each, 2(W-1) = 4 ring steps
        var ring = InMemoryRingTransport.CreateRing(world);
        var activities = Enumerable.Range(0, world).Select(_ => new WorkerActivity()).ToArray();
        var seen = Enumerable.Range(0, world).Select(_ => new List<(int Phase, int Step, int Piece, int Pieces, int Peer)>()).ToArray();
        var buffers = Enumerable.Range(0, world).Select(r => Enumerable.Range(0, length).Select(i => (float)(r + i)).ToArray()).ToArray();
        var sums = Enumerable.Range(0, world).Select(r =>
        {
            var all = new RingAllReduce(ring[r], maxPieceFloats: piece) { Progress = new Recorder(seen[r], activities[r].RingObserver(["w1", "w2", "w3"])) };
            return all.SumAsync(buffers[r], 7);
        });
        await Task.WhenAll(sums);
        for (var r = 0; r < world; r++)
        {
            Assert.Equal(Enumerable.Range(1, 12), seen[r].Select(s => s.Piece));
            Assert.All(seen[r], s => Assert.Equal(12, s.Pieces));
            Assert.All(seen[r], s => Assert.Equal((r + world - 1) % world, s.Peer));   // receives from its left neighbour
            Assert.Equal([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1], seen[r].Select(s => s.Phase));
            var last = activities[r].Snapshot();
            Assert.Equal(ActivityPhases.AllReduce, last.Phase);
            Assert.Equal("all-gather step 2/2 piece 12/12", last.Detail);
            Assert.Equal(new[] { "w3", "w1", "w2" }[r], last.WaitingOn);
            foreach (var (v, i) in buffers[r].Select((v, i) => (v, i))) Assert.Equal(3 * i + 3, v);
        }
    }

    [Fact]
    public async Task With_pieces_landing_in_place_the_ring_reports_the_pieces_it_still_waits_for_in_order()
    {
        const int world = 3, length = 30, piece = 4;
        var ring = InMemoryRingTransport.CreateRing(world, landings: true);
        var seen = Enumerable.Range(0, world).Select(_ => new List<(int Phase, int Step, int Piece, int Pieces, int Peer)>()).ToArray();
        var buffers = Enumerable.Range(0, world).Select(r => Enumerable.Range(0, length).Select(i => (float)(r + i)).ToArray()).ToArray();
        await Task.WhenAll(Enumerable.Range(0, world).Select(r =>
            new RingAllReduce(ring[r], maxPieceFloats: piece) { Progress = new Recorder(seen[r], new WorkerActivity().RingObserver(["w1", "w2", "w3"])) }.SumAsync(buffers[r], 7)));
        for (var r = 0; r < world; r++)
        {
            // Reported only while a piece is still awaited, not for each one.
            List<(int Phase, int Step, int Piece, int Pieces, int Peer)> reports;
            lock (seen[r]) reports = [.. seen[r]];
            Assert.NotEmpty(reports);
            Assert.All(reports, s => Assert.InRange(s.Piece, 1, 12));
            Assert.All(reports, s => Assert.Equal(12, s.Pieces));
            Assert.All(reports, s => Assert.Equal((r + world - 1) % world, s.Peer));
            foreach (var (v, i) in buffers[r].Select((v, i) => (v, i))) Assert.Equal(3 * i + 3, v);
        }
    }

    [Fact]
    public void Entering_a_phase_restarts_its_clock_only_when_the_phase_changes()
    {
        var a = new WorkerActivity();
        var changes = new List<string>();
        a.PhaseChanged += changes.Add;
        a.Job("job-0001", "grpc");
        a.Enter(ActivityPhases.Forward, newStep: 5);
        a.Enter(ActivityPhases.Forward, "micro-batch 2");
        a.Enter(ActivityPhases.Backward);
        var s = a.Snapshot();
        Assert.Equal((ActivityPhases.Backward, 5L, "job-0001", "grpc"), (s.Phase, s.Step, s.JobId, s.Transport));
        Assert.Equal([ActivityPhases.Forward, ActivityPhases.Backward], changes);
        a.Job("");
        Assert.Equal((ActivityPhases.Idle, 0L, ""), (a.Snapshot().Phase, a.Snapshot().Step, a.Snapshot().JobId));
    }

    private sealed class Recorder(List<(int, int, int, int, int)> seen, IRingProgress inner) : IRingProgress
    {
        public void Waiting(long operation, int phase, int ringStep, int ringSteps, int piece, int pieces, int peerRank)
        {
            lock (seen) seen.Add((phase, ringStep, piece, pieces, peerRank));
            inner.Waiting(operation, phase, ringStep, ringSteps, piece, pieces, peerRank);
        }

        public void Done(long operation) => inner.Done(operation);
    }
}
