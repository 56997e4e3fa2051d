namespace Dtrain.Collective;

public sealed partial class SharedMemoryAllReduce
{
    /// <summary>One rank's segment, mapped: a 4 KiB header, then two slots of values.</summary>
    private sealed unsafe class Segment : IDisposable
    {
        private const string Suffix = ".seg";
        private readonly SharedMemoryMapping mapping;
        private readonly byte* basePointer;
        private readonly int slotFloats;
        private readonly PeerLiveness liveness;

        private Segment(SharedMemoryMapping mapping, int slotFloats, TimeSpan? peerSilentAfter)
        {
            liveness = new PeerLiveness(peerSilentAfter);
            this.mapping = mapping;
            basePointer = mapping.Base;
            this.slotFloats = slotFloats;
        }

        public ulong Id => this.mapping.Id;

        public string FilePath => this.mapping.FilePath;

        /// <summary>Creates this rank's segment (mode 0600), its pages reserved up front: a full /dev/shm fails here, not later with SIGBUS.</summary>
        public static Segment Create(int rank, int world, int slotFloats, TimeSpan? peerSilentAfter)
        {
            var segment = new Segment(SharedMemoryMapping.Create(Suffix, SegmentBytes(slotFloats)), slotFloats, peerSilentAfter);
            segment.SetInt(OffRank, rank);
            segment.SetInt(OffWorld, world);
            segment.SetInt(OffPid, Environment.ProcessId);
            segment.SetLong(OffPidNs, SharedMemoryLiveness.OwnPidNamespace);
            segment.SetLong(OffSlotFloats, slotFloats);
            segment.SetLong(OffMagic, MagicValue);
            return segment;
        }

        /// <summary>Maps rank <paramref name="rank"/>'s segment by its id and checks its header.</summary>
        public static Segment Open(ulong id, int rank, int world, int slotFloats, TimeSpan? peerSilentAfter)
        {
            var segment = new Segment(SharedMemoryMapping.Open(Suffix, id, SegmentBytes(slotFloats)), slotFloats, peerSilentAfter);
            if (segment.Long(OffMagic) != MagicValue || segment.Int(OffRank) != rank || segment.Int(OffWorld) != world || segment.Long(OffSlotFloats) != slotFloats)
            {
                segment.Dispose();
                throw new InvalidDataException($"{segment.FilePath} is not rank {rank}'s segment of this group of {world}");
            }
            return segment;
        }

        /// <summary>Removes the segment's name (its owner only; the mappings stay valid).</summary>
        public void DeleteFile() => this.mapping.DeleteFile();

        public Span<float> Slot(int slot, int offset, int count) =>
            new((float*)(basePointer + HeaderBytes) + (long)slot * this.slotFloats + offset, count);

        public long Long(int offset) => Volatile.Read(ref *(long*)(basePointer + offset));

        public void SetLong(int offset, long value) => Volatile.Write(ref *(long*)(basePointer + offset), value);

        public int Int(int offset) => Volatile.Read(ref *(int*)(basePointer + offset));

        public void SetInt(int offset, int value) => Volatile.Write(ref *(int*)(basePointer + offset), value);

        public void Wake() => SharedMemoryRing.Futex.WakeAll((int*)(basePointer + OffArrive));

        /// <summary>Waits until the word at <paramref name="offset"/> is no longer <paramref name="seen"/>, or 20 ms pass.</summary>
        public void WaitChange(int offset, int seen) => SharedMemoryRing.Futex.Wait((int*)(basePointer + offset), seen, 20_000_000);

        public void Beat() => Interlocked.Increment(ref *(long*)(basePointer + OffBeat));

        /// <summary>Why this (peer's) segment's owner is gone, or null while it is alive and in the group.</summary>
        public string? Gone()
        {
            if (Int(OffClosed) != 0) return "it left the group (its operation failed, or it was stopped)";
            var pid = Int(OffPid);
            return liveness.Check(pid, Long(OffPidNs), Long(OffBeat)) switch
            {
                PeerLiveness.Verdict.Died => $"its process {pid} died",
                PeerLiveness.Verdict.Silent => $"it has shown no heartbeat for {liveness.SilentAfter.TotalSeconds:0.#} s",
                _ => null,
            };
        }

        public void Dispose() => this.mapping.Dispose();
    }
}
