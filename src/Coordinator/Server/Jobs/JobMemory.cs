using Dtrain.Distributed.Pipeline;
using Dtrain.Specs;
using Dtrain.Training;
using Dtrain.Training.Tasks;

namespace Dtrain.Server;

/// <summary>
/// The memory check once a job's data is prepared. Submit estimates with the smallest vocabulary (the data is not read
/// yet), so a spec whose size comes from its data — a word vocabulary of 10^5, a million labels — passes there; here
/// the real vocabulary, labels and longest sequence are known, and every assigned worker's reported memory (its
/// memory, or its --memory-budget when less) is checked before the first step: the job fails naming the fields, the
/// estimate and the worker, instead of its workers dying of it.
/// </summary>
public static class JobMemory
{
    public static void ThrowIfOver(JobRecord job, PreparedData data, IReadOnlyList<WorkerRecord> workers)
    {
        var spec = job.Spec;
        var vocab = data.Tokenizer.VocabSize;
        var classes = data.Labels.Count;
        var task = TrainingTasks.For(spec);
        var outputs = task.Outputs(vocab, classes);
        var measured = workers.Where(w => w.Capabilities.MemoryBytes > 0).ToList();
        if (measured.Count == 0) return;
        if (spec.Parallelism?.Pipeline is { } pipeline)
        {
            PipelinePlan layout;
            try
            {
                layout = PipelinePlan.Create(spec, workers.Count, vocab, outputs);
            }
            catch (ArgumentException)
            {
                return; // the pipeline driver reports a layout that does not fit its workers
            }
            // Slot = replica × stages + stage, in the order the workers were reserved (as PipelineDriver assigns them).
            for (var slot = 0; slot < workers.Count; slot++)
            {
                var w = workers[slot];
                var stage = slot % pipeline.Stages;
                if (w.Capabilities.MemoryBytes <= 0 || stage >= layout.Memory.Count) continue;
                var need = layout.Memory[stage];
                if (need.Total <= w.Capabilities.MemoryBytes) continue;
                var plan = layout.Stages[stage];
                throw new JobFailure(
                    $"after preparing the data: pipeline stage {stage} (layers {plan.FirstLayer}-{plan.EndLayer - 1}) needs about {PipelinePlan.Mb(need.Total)} MB — weights {PipelinePlan.Mb(need.Weights)} + " +
                    $"gradients {PipelinePlan.Mb(need.Gradients)} + optimizer state {PipelinePlan.Mb(need.OptimizerState)} + activations {PipelinePlan.Mb(need.Activations)} — for " +
                    $"{TrainingMemory.Fields(spec, vocab, outputs, known: true)} and training.batch_size {spec.Training.BatchSize}; worker {w.Id} reports {PipelinePlan.Mb(w.Capabilities.MemoryBytes)} MB. " +
                    "Make the model or the batch smaller, or split it over more stages (parallelism.pipeline; `dtrain plan` shows the memory per stage)");
            }
            return;
        }
        var longest = task.LongestSequence(data);
        // The smallest worker decides: every replica holds the whole model and its share of the batch.
        var smallest = measured.MinBy(w => w.Capabilities.MemoryBytes)!;
        var budget = new MemoryBudget(smallest.Capabilities.MemoryBytes, $"what worker {smallest.Id} reports", "or run it on workers with more memory");
        try
        {
            TrainingMemory.ThrowIfOver(spec, $"job {job.Id}", budget, vocab, classes, longest, workers.Count);
        }
        catch (SpecException e)
        {
            throw new JobFailure("after preparing the data: " + string.Join("; ", e.Errors.Select(x => x.ToString())));
        }
    }
}
