using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dtrain.Checkpoints;

/// <summary>
/// Managed checks of the binary state that TorchSharp 0.107 writes (module weights, optimizer state) and of torch's
/// CPU RNG state, against the live objects they are about to be loaded into. A libtorch error aborts this process
/// instead of raising a .NET exception, and TorchSharp's own readers allocate from lengths they read: so every length,
/// type and shape is checked here, in managed code, before a byte reaches torch. Each check throws
/// <see cref="InvalidDataException"/> saying what is wrong and where (entry, parameter, offset).
/// </summary>
/// <remarks>
/// The formats: a tensor is LEB128 dtype, LEB128 rank, LEB128 size per dimension, then the elements' raw bytes.
/// <c>Module.save</c> writes LEB128 entry count, then per entry its name (a .NET <c>BinaryWriter</c> string) and
/// tensor. <c>OptimizerHelper.save_state_dict</c> writes the optimizer's type name, LEB128 counts of parameter groups
/// and states, each group's options (doubles and booleans), then each parameter's state: Adam and AdamW a step
/// (int64), two moment tensors and an optional third; SGD an optional momentum buffer.
/// </remarks>
public static class TorchStateFormat
{
    /// <summary>Checks <paramref name="bytes"/> (Module.save output) against <paramref name="model"/>'s state dict: every entry once, with its dtype and shape, and nothing else.</summary>
    public static void CheckModule(byte[] bytes, nn.Module model)
    {
        var expected = model.state_dict();
        var r = new Reader(bytes);
        var count = r.Leb128("entry count");
        if (count != expected.Count)
            throw new InvalidDataException($"holds {count} entries, the model has {expected.Count}");
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (long i = 0; i < count; i++)
        {
            var name = r.String($"name of entry {i}");
            if (!expected.TryGetValue(name, out var target))
                throw new InvalidDataException($"entry {i} \"{Truncate(name)}\" is not a parameter of the model (expected one of: {string.Join(", ", expected.Keys.Take(8))}{(expected.Count > 8 ? ", ..." : "")})");
            if (!seen.Add(name)) throw new InvalidDataException($"entry \"{name}\" appears twice");
            r.Tensor(target, $"entry \"{name}\"");
        }
        r.End();
    }

    /// <summary>Checks <paramref name="bytes"/> (OptimizerHelper.save_state_dict output) against <paramref name="optimizer"/>: its kind, group and parameter counts, option sizes and every state tensor's dtype and shape.</summary>
    public static void CheckOptimizer(byte[] bytes, optim.Optimizer optimizer, IReadOnlyList<Parameter> parameters)
    {
        var helper = optimizer as OptimizerHelper ?? throw new InvalidDataException($"optimizer {optimizer.GetType().Name} has no managed state to restore");
        var kind = helper.GetType().Name;
        var r = new Reader(bytes);
        var name = r.String("optimizer name");
        if (name != kind) throw new InvalidDataException($"is the state of optimizer \"{Truncate(name)}\", this job uses \"{kind}\" (optimizer.kind changed?)");
        var sd = helper.state_dict();
        var groups = r.Leb128("parameter group count");
        var states = r.Leb128("state count");
        if (groups != sd.Options.Count) throw new InvalidDataException($"holds {groups} parameter group(s), the optimizer has {sd.Options.Count}");
        if (states != sd.State.Count || states != parameters.Count) throw new InvalidDataException($"holds the state of {states} parameter(s), the model has {parameters.Count}");
        for (var g = 0; g < sd.Options.Count; g++)
        {
            // Options are doubles and booleans only: their size is what the live options serialize to.
            using var ms = new MemoryStream();
            using (var w = new BinaryWriter(ms, Encoding.UTF8, leaveOpen: true)) sd.Options[g].SaveStateDict(w);
            r.Skip(ms.Length, $"options of parameter group {g}");
        }
        for (var i = 0; i < parameters.Count; i++)
        {
            var what = $"state of parameter {i} {Shape(parameters[i].shape)}";
            switch (kind)
            {
                case "Adam" or "AdamW":
                    var step = r.Int64($"{what}: step");
                    if (step < 0) throw new InvalidDataException($"{what}: step {step} is negative");
                    r.Tensor(parameters[i], $"{what}: first moment");
                    r.Tensor(parameters[i], $"{what}: second moment");
                    if (r.Bool($"{what}: max second moment flag")) r.Tensor(parameters[i], $"{what}: max second moment");
                    break;
                case "SGD":
                    if (r.Bool($"{what}: momentum buffer flag")) r.Tensor(parameters[i], $"{what}: momentum buffer");
                    break;
                default:
                    throw new InvalidDataException($"the state of optimizer {kind} cannot be checked");
            }
        }
        r.End();
    }

    /// <summary>Byte offsets in torch's CPUGeneratorImplState (mt19937): left, seeded, next; the state holds 624 words.</summary>
    private const int RngLeftOffset = 8, RngSeededOffset = 12, RngNextOffset = 16, MersenneStateWords = 624;

    /// <summary>Checks a CPU RNG state: the length this torch uses, and the mt19937 fields torch would refuse (by aborting).</summary>
    public static void CheckRngState(byte[] bytes, int expectedLength)
    {
        if (bytes.Length != expectedLength) throw new InvalidDataException($"has {bytes.Length} bytes, this torch's RNG state has {expectedLength}");
        if (bytes.Length < RngNextOffset + 8) return;
        var left = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(RngLeftOffset));
        var seeded = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(RngSeededOffset));
        var next = (uint)BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(RngNextOffset));
        if (left is < 1 or > MersenneStateWords || seeded == 0 || next > MersenneStateWords)
            throw new InvalidDataException($"is not a valid mt19937 state (left {left}, seeded {seeded}, next {next})");
    }

    private static string Shape(long[] shape) => "[" + string.Join(", ", shape) + "]";

    private static string Truncate(string s) => s.Length <= 60 ? s : s[..60] + "…";

    /// <summary>Reads the primitives of the formats from a byte array, bounds-checked, naming what it reads in every error.</summary>
    private sealed class Reader(byte[] bytes)
    {
        private static readonly UTF8Encoding StrictUtf8 = new(false, throwOnInvalidBytes: true);
        private int position;

        private InvalidDataException Truncated(string what, long need) =>
            new($"truncated: {what} needs {need} byte(s) at offset {position}, {bytes.Length - position} left");

        public long Leb128(string what)
        {
            ulong value = 0;
            for (var shift = 0; ; shift += 7)
            {
                if (position >= bytes.Length) throw Truncated(what, 1);
                if (shift > 63) throw new InvalidDataException($"{what} at offset {position} is not a valid number (over 64 bits)");
                var b = bytes[position++];
                value |= (ulong)(b & 0x7F) << shift;
                if ((b & 0x80) == 0) break;
            }
            if (value > long.MaxValue) throw new InvalidDataException($"{what} {value} is out of range");
            return (long)value;
        }

        public string String(string what)
        {
            // BinaryWriter's string: a 7-bit encoded int32 byte length, then UTF-8.
            var length = 0;
            for (var shift = 0; ; shift += 7)
            {
                if (position >= bytes.Length) throw Truncated(what, 1);
                if (shift > 28) throw new InvalidDataException($"{what}: invalid length at offset {position}");
                var b = bytes[position++];
                length |= (b & 0x7F) << shift;
                if ((b & 0x80) == 0) break;
            }
            if (length < 0 || length > bytes.Length - position) throw Truncated(what, length);
            try
            {
                var s = StrictUtf8.GetString(bytes, position, length);
                position += length;
                return s;
            }
            catch (DecoderFallbackException)
            {
                throw new InvalidDataException($"{what} at offset {position} is not valid UTF-8");
            }
        }

        public long Int64(string what)
        {
            if (bytes.Length - position < 8) throw Truncated(what, 8);
            var v = BinaryPrimitives.ReadInt64LittleEndian(bytes.AsSpan(position));
            position += 8;
            return v;
        }

        public bool Bool(string what)
        {
            if (position >= bytes.Length) throw Truncated(what, 1);
            var b = bytes[position++];
            return b switch
            {
                0 => false,
                1 => true,
                _ => throw new InvalidDataException($"{what} at offset {position - 1} is {b}, not a boolean"),
            };
        }

        public void Skip(long count, string what)
        {
            if (bytes.Length - position < count) throw Truncated(what, count);
            position += (int)count;
        }

        /// <summary>A tensor record that must have <paramref name="like"/>'s dtype and shape; its data is skipped.</summary>
        public void Tensor(Tensor like, string what)
        {
            var dtype = Leb128($"{what}: dtype");
            if (dtype != (long)like.dtype)
                throw new InvalidDataException($"{what}: dtype {dtype.ToString(CultureInfo.InvariantCulture)} where {like.dtype} ({(int)like.dtype}) was expected");
            var rank = Leb128($"{what}: rank");
            if (rank != like.shape.Length) throw new InvalidDataException($"{what}: rank {rank}, expected {like.shape.Length} (shape {Shape(like.shape)})");
            var shape = new long[rank];
            for (var d = 0; d < rank; d++) shape[d] = Leb128($"{what}: size of dimension {d}");
            if (!shape.SequenceEqual(like.shape))
                throw new InvalidDataException($"{what}: shape {Shape(shape)}, the model built from the checkpoint's spec and vocabulary has {Shape(like.shape)}");
            Skip(like.numel() * like.ElementSize, $"{what}: data of shape {Shape(shape)}");
        }

        public void End()
        {
            if (position != bytes.Length)
                throw new InvalidDataException($"{bytes.Length - position} unexpected byte(s) after the last entry (offset {position})");
        }
    }
}
