using System.Globalization;
using System.Text;
using Dtrain.Specs;
using Dtrain.Training.Tasks;

namespace Dtrain.Distributed.Pipeline;

/// <summary>Estimated memory of one stage worker, in bytes.</summary>
public sealed record StageMemory(long Weights, long Gradients, long OptimizerState, long Activations)
{
    public long Total => Weights + Gradients + OptimizerState + Activations;
}

/// <summary>
/// Where a job's work goes on a cluster: D data-parallel replicas of a model split into K pipeline stages (K = 1
/// without a pipeline), each stage's layers, parameters and memory, and the schedule — or why it cannot run.
/// </summary>
public sealed class PipelinePlan
{
    public JobSpec Spec { get; }
    public ModelLayout Model { get; }
    public int Workers { get; }
    public int Replicas { get; }
    public IReadOnlyList<StagePlan> Stages { get; }
    public IReadOnlyList<StageMemory> Memory { get; }
    public PipelineSchedule Schedule { get; }
    public bool Balanced { get; }
    public int RowsPerMicroBatch { get; }

    private PipelinePlan(JobSpec spec, ModelLayout model, int workers, int replicas, IReadOnlyList<StagePlan> stages, IReadOnlyList<StageMemory> memory,
        PipelineSchedule schedule, bool balanced, int rows)
    {
        Spec = spec;
        Model = model;
        Workers = workers;
        Replicas = replicas;
        Stages = stages;
        Memory = memory;
        Schedule = schedule;
        Balanced = balanced;
        RowsPerMicroBatch = rows;
    }

    /// <summary>
    /// Plans <paramref name="spec"/> on <paramref name="workers"/> workers for a vocabulary of <paramref name="vocabSize"/>
    /// and <paramref name="outputs"/> outputs. Throws <see cref="ArgumentException"/> naming what cannot run: more stages
    /// than layers, D × K over the workers, a batch that micro-batches or replicas do not divide, a stage over
    /// <paramref name="memoryBudgetBytes"/> (0 = no budget).
    /// </summary>
    public static PipelinePlan Create(JobSpec spec, int workers, int vocabSize, int outputs, long memoryBudgetBytes = 0)
    {
        if (workers < 1) throw new ArgumentException($"--workers {workers} must be at least 1");
        var pipeline = spec.Parallelism?.Pipeline;
        var k = pipeline?.Stages ?? 1;
        var m = pipeline?.Microbatches ?? 1;
        var model = ModelLayout.Of(spec.Model, vocabSize, outputs);
        var ranges = pipeline?.Ranges();
        var stages = ranges is null ? PipelinePartitioner.Balanced(model, k) : PipelinePartitioner.FromRanges(model, ranges);
        var d = spec.Parallelism?.Data is > 0 and var requested ? requested : workers / k;
        if (d < 1 || d * k > workers)
            throw new ArgumentException($"{Math.Max(d, 1)} replica(s) × {k} stage(s) need {Math.Max(d, 1) * k} workers; --workers is {workers}");
        var batch = spec.Training.BatchSize;
        if (batch % d != 0) throw new ArgumentException($"training.batch_size {batch} is not divisible by the {d} data-parallel replicas");
        if (batch / d % m != 0) throw new ArgumentException($"the {batch / d} rows of each replica's batch do not split into {m} equal micro-batches");
        var rows = batch / d / m;
        var schedule = PipelineSchedule.Create(pipeline?.Schedule ?? PipelineSchedule.OneFOneBKind, k, m);
        var memory = stages.Select(s => Estimate(spec, s, rows, schedule.PeakInFlight(s.Stage), outputs)).ToList();
        if (memoryBudgetBytes > 0)
        {
            var over = memory.Select((mem, s) => (mem, s)).Where(x => x.mem.Total > memoryBudgetBytes).ToList();
            if (over.Count > 0)
                throw new ArgumentException(string.Join("; ", over.Select(x => $"stage {x.s} needs about {Mb(x.mem.Total)} MB, over the {Mb(memoryBudgetBytes)} MB budget")) +
                    (k < spec.Model.Layers ? "; split the model into more stages" : ""));
        }
        return new PipelinePlan(spec, model, workers, d, stages, memory, schedule, ranges is null, rows);
    }

    /// <summary>
    /// Weights, gradients and optimizer state are 4 bytes per parameter each (Adam/AdamW keep two moments, SGD with
    /// momentum one). Activations per micro-batch in flight: the stage's input, and per layer and time step the gate
    /// pre-activations and the hidden (and cell) state; the last stage also holds the logits and their gradient.
    /// </summary>
    public static StageMemory Estimate(JobSpec spec, StagePlan s, int rows, int inFlight, int outputs)
    {
        var p = s.Parameters;
        var moments = spec.Optimizer.Kind switch
        {
            OptimizerKinds.Adam or OptimizerKinds.AdamW => 2,
            OptimizerKinds.Sgd when spec.Optimizer.Momentum > 0 => 1,
            _ => 0,
        };
        var mdl = spec.Model;
        var dirs = mdl.Bidirectional ? 2 : 1;
        var task = TrainingTasks.For(spec);
        var t = task.ActivationLength(spec);
        var gates = mdl.Cell switch { CellKinds.Lstm => 4, CellKinds.Gru => 3, _ => 1 };
        long perMicro = rows * t * (s.HasEmbedding ? mdl.EmbeddingDim : (long)mdl.HiddenSize * dirs);
        perMicro += s.LayerCount * rows * t * (long)dirs * mdl.HiddenSize * (gates + 2);
        if (s.HasHead) perMicro += 2L * rows * task.LogitsPerRow(t) * outputs;
        return new StageMemory(4 * p, 4 * p, 4L * moments * p, 4 * perMicro * inFlight);
    }

    public static string Mb(long bytes) => (bytes / 1e6).ToString("N1", CultureInfo.InvariantCulture);

    /// <summary>The plan as text: layout, a row per stage, and the schedule grid.</summary>
    public string Render()
    {
        var k = Stages.Count;
        var sb = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        var mdl = Spec.Model;
        sb.AppendLine(inv, $"model: {mdl.Cell}, {mdl.Layers} layer(s) × hidden {mdl.HiddenSize}, {Model.Total:N0} parameters (embedding {Model.Embedding:N0}, head {Model.Head:N0})");
        sb.AppendLine(inv, $"layout: {Replicas} data-parallel replica(s) × {k} pipeline stage(s) = {Replicas * k} of {Workers} worker(s); " +
            $"{Schedule.MicroBatches} micro-batch(es) of {RowsPerMicroBatch} row(s) per replica; partition {(Balanced ? "balanced (by parameter count)" : "as given")}");
        sb.AppendLine("memory estimates per worker: weights + gradients + optimizer state + activations of the micro-batches in flight");
        sb.AppendLine("stage  layers        parameters    weights MB  grads MB  optim MB  activ MB  total MB  in flight  workers");
        for (var s = 0; s < k; s++)
        {
            var st = Stages[s];
            var mem = Memory[s];
            var layers = (st.LayerCount == 1 ? $"{st.FirstLayer}" : $"{st.FirstLayer}-{st.EndLayer - 1}") + (st.HasEmbedding ? " +emb" : "") + (st.HasHead ? " +head" : "");
            var workers = string.Join(",", Enumerable.Range(0, Replicas).Select(d => (d * k + s).ToString(inv)));
            sb.AppendLine(inv, $"{s,-6} {layers,-13} {st.Parameters,12:N0}  {Mb(mem.Weights),10}  {Mb(mem.Gradients),8}  {Mb(mem.OptimizerState),8}  {Mb(mem.Activations),8}  {Mb(mem.Total),8}  {Schedule.PeakInFlight(s),9}  {workers}");
        }
        sb.AppendLine("workers: slot = replica × stages + stage, in registration order; the same stage of every replica all-reduces its gradients");
        var timeline = Schedule.Simulate();
        var m = Schedule.MicroBatches;
        sb.AppendLine(inv, $"schedule {Schedule.Kind}: {timeline.Length} time steps (forward = backward = 1), bubble {timeline.BubbleFraction:P1}; efficiency bound M/(M+K-1) = {(double)m / (m + k - 1):P1}");
        sb.Append(timeline.Render());
        return sb.ToString();
    }
}
