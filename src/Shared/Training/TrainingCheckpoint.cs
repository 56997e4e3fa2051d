using System.Text;
using System.Text.Json;
using Dtrain.Checkpoints;
using Dtrain.Data;
using Dtrain.Models;
using Dtrain.Specs;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dtrain.Training;

/// <summary>
/// Maps a training run to checkpoint sections and back: spec, tokenizer, labels, state, model weights, optimizer
/// state, torch RNG state and the carried hidden state, so a resumed run continues where it stopped.
/// </summary>
public static class TrainingCheckpoint
{
    public const string Spec = "spec.json", Tokenizer = "tokenizer.json", Labels = "labels.json", State = "state.json",
        Model = "model.bin", Optimizer = "optimizer.bin", Rng = "rng.bin", Carried = "carried.bin";

    private static readonly JsonSerializerOptions Json = new(JobSpecSerializer.Options) { UnmappedMemberHandling = System.Text.Json.Serialization.JsonUnmappedMemberHandling.Skip };

    public static CheckpointData Capture(JobSpec spec, ITokenizer tokenizer, LabelSet labels, TrainingState state, TrainingEngine engine)
    {
        var sections = new Dictionary<string, byte[]>
        {
            [Spec] = Encoding.UTF8.GetBytes(JobSpecSerializer.Serialize(spec)),
            [Tokenizer] = JsonSerializer.SerializeToUtf8Bytes(tokenizer.ToState(), Json),
            [Labels] = JsonSerializer.SerializeToUtf8Bytes(labels.Names, Json),
            [State] = JsonSerializer.SerializeToUtf8Bytes(state, Json),
            [Model] = SaveModel(engine.Model),
            [Optimizer] = SaveOptimizer(engine.Optimizer),
            [Rng] = random.get_rng_state().bytes.ToArray(),
        };
        if (engine.CarriedState is { } carried) sections[Carried] = SaveState(carried);
        return new CheckpointData(state.Step, sections, DateTimeOffset.UtcNow);
    }

    public static JobSpec ReadSpec(CheckpointData data, string source) =>
        JobSpecSerializer.Parse(Encoding.UTF8.GetString(Require(data, Spec, source)), $"{source} ({Spec})");

    public static ITokenizer ReadTokenizer(CheckpointData data, string source) =>
        TokenizerFactory.FromState(JsonSerializer.Deserialize<TokenizerState>(Require(data, Tokenizer, source), Json)
            ?? throw new InvalidDataException($"{source}: {Tokenizer} is empty"));

    public static LabelSet ReadLabels(CheckpointData data, string source) =>
        new(JsonSerializer.Deserialize<string[]>(Require(data, Labels, source), Json) ?? []);

    public static TrainingState ReadState(CheckpointData data, string source) =>
        JsonSerializer.Deserialize<TrainingState>(Require(data, State, source), Json) ?? throw new InvalidDataException($"{source}: {State} is empty");

    /// <summary>Loads weights (and, when <paramref name="withOptimizer"/>, optimizer, RNG and carried state) into an engine built from the same spec.</summary>
    public static void Restore(CheckpointData data, string source, TrainingEngine engine, bool withOptimizer)
    {
        using (var ms = new MemoryStream(Require(data, Model, source)))
            engine.Model.load(ms);
        if (!withOptimizer) return;
        using (var ms = new MemoryStream(Require(data, Optimizer, source)))
        using (var reader = new BinaryReader(ms))
            ((OptimizerHelper)engine.Optimizer).load_state_dict(reader);
        var rng = random.get_rng_state();
        var bytes = Require(data, Rng, source);
        if (bytes.Length != rng.bytes.Length) throw new InvalidDataException($"{source}: {Rng} has {bytes.Length} bytes, this torch expects {rng.bytes.Length}");
        rng.bytes = bytes;
        random.set_rng_state(rng);
        engine.CarriedState = data.Sections.TryGetValue(Carried, out var carried) ? LoadState(carried) : null;
    }

    private static byte[] Require(CheckpointData data, string name, string source) =>
        data.Sections.TryGetValue(name, out var bytes) ? bytes : throw new InvalidDataException($"{source}: checkpoint has no section \"{name}\"");

    private static byte[] SaveModel(nn.Module model)
    {
        using var ms = new MemoryStream();
        model.save(ms);
        return ms.ToArray();
    }

    private static byte[] SaveOptimizer(optim.Optimizer optimizer)
    {
        using var ms = new MemoryStream();
        using (var writer = new BinaryWriter(ms, Encoding.UTF8, leaveOpen: true))
            ((OptimizerHelper)optimizer).save_state_dict(writer);
        return ms.ToArray();
    }

    private static byte[] SaveState(RecurrentState state)
    {
        using var ms = new MemoryStream();
        using var w = new BinaryWriter(ms);
        WriteTensor(w, state.H);
        w.Write(state.C is not null);
        if (state.C is not null) WriteTensor(w, state.C);
        w.Flush();
        return ms.ToArray();
    }

    private static RecurrentState LoadState(byte[] bytes)
    {
        using var r = new BinaryReader(new MemoryStream(bytes));
        var h = ReadTensor(r);
        var c = r.ReadBoolean() ? ReadTensor(r) : null;
        return new RecurrentState(h, c);
    }

    private static void WriteTensor(BinaryWriter w, Tensor t)
    {
        using var cpuT = t.cpu().contiguous();
        w.Write(cpuT.shape.Length);
        foreach (var d in cpuT.shape) w.Write(d);
        var data = cpuT.data<float>().ToArray();
        w.Write(data.Length);
        foreach (var v in data) w.Write(v);
    }

    private static Tensor ReadTensor(BinaryReader r)
    {
        var rank = r.ReadInt32();
        if (rank is < 1 or > 8) throw new InvalidDataException($"carried state: tensor rank {rank}");
        var shape = new long[rank];
        for (var i = 0; i < rank; i++) shape[i] = r.ReadInt64();
        var n = r.ReadInt32();
        if (n != shape.Aggregate(1L, (a, b) => a * b)) throw new InvalidDataException("carried state: size does not match shape");
        var data = new float[n];
        for (var i = 0; i < n; i++) data[i] = r.ReadSingle();
        var t = tensor(data, shape);
        t.DetachFromDisposeScope();
        return t;
    }
}
