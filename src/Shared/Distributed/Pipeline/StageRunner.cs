using Dtrain.Training;
using static TorchSharp.torch;

namespace Dtrain.Distributed.Pipeline;

/// <summary>
/// How a stage reaches its neighbours: activations travel to the next stage, activation gradients back to the
/// previous one, each matched by micro-batch. Over the network between workers, or in memory in tests.
/// Received tensors belong to the receiver; a sent tensor may be disposed by the sender once the send completes.
/// </summary>
public interface IStageLinks
{
    Task SendActivationAsync(int micro, Tensor activation, CancellationToken cancel);
    Task<Tensor> ReceiveActivationAsync(int micro, CancellationToken cancel);
    Task SendGradientAsync(int micro, Tensor gradient, CancellationToken cancel);
    Task<Tensor> ReceiveGradientAsync(int micro, CancellationToken cancel);
}

/// <summary>What one stage did in one step: the summed loss and its count (last stage only), and its compute time.</summary>
public sealed record StageStepResult(double LossSum, long Count, double ComputeMs);

/// <summary>
/// Executes one stage's action list for one step: the schedule is data, the runner only follows it. Sends are not
/// awaited before the next action, so transferring one micro-batch's activation overlaps the next one's compute;
/// the step ends when every send has completed. The optimizer step (<see cref="PipelineStage.Apply"/>) is the
/// caller's, after the stages have combined their squared gradient norms.
/// </summary>
public static class StageRunner
{
    /// <param name="microBatches">
    /// The step's micro-batches: token ids for the first stage, targets for the last, and a classifier's lengths for all.
    /// Null = an empty micro-batch (a short batch has fewer rows than micro-batches): every stage skips its actions.
    /// </param>
    public static async Task<StageStepResult> RunStepAsync(PipelineStage stage, IReadOnlyList<PipelineAction> actions, IReadOnlyList<Batch?> microBatches,
        IStageLinks links, bool carryState, CancellationToken cancel, Func<Func<object?>, Task<object?>>? onTorch = null)
    {
        onTorch ??= f => Task.FromResult(f());
        var sends = new List<Task>();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        double waitMs = 0;
        double lossSum = 0;
        long count = 0;
        await onTorch(() => { stage.BeginStep(); return null; }).ConfigureAwait(false);
        try
        {
            foreach (var a in actions)
            {
                if (a.Stage != stage.Plan.Stage) throw new ArgumentException($"action {a} of stage {a.Stage} given to stage {stage.Plan.Stage}");
                if (microBatches[a.MicroBatch] is not { } batch) continue;
                if (a.Op == PipelineOp.Forward)
                {
                    Tensor input;
                    if (stage.IsFirst) input = batch.Inputs;
                    else
                    {
                        var waited = clock.Elapsed.TotalMilliseconds;
                        input = await links.ReceiveActivationAsync(a.MicroBatch, cancel).ConfigureAwait(false);
                        waitMs += clock.Elapsed.TotalMilliseconds - waited;
                    }
                    var output = (Tensor)(await onTorch(() => stage.Forward(a.MicroBatch, input, stage.IsLast ? batch.Targets : null, batch.Lengths, carryState)).ConfigureAwait(false))!;
                    if (!stage.IsFirst) input.Dispose();
                    if (stage.IsLast)
                    {
                        lossSum += output.item<float>();
                        count += batch.Count;
                        output.Dispose();
                    }
                    else sends.Add(SendThenDispose(links.SendActivationAsync(a.MicroBatch, output, cancel), output));
                }
                else
                {
                    Tensor? gradient = null;
                    if (!stage.IsLast)
                    {
                        var waited = clock.Elapsed.TotalMilliseconds;
                        gradient = await links.ReceiveGradientAsync(a.MicroBatch, cancel).ConfigureAwait(false);
                        waitMs += clock.Elapsed.TotalMilliseconds - waited;
                    }
                    var back = (Tensor?)await onTorch(() => stage.Backward(a.MicroBatch, gradient)).ConfigureAwait(false);
                    gradient?.Dispose();
                    if (back is not null) sends.Add(SendThenDispose(links.SendGradientAsync(a.MicroBatch, back, cancel), back));
                }
            }
            await Task.WhenAll(sends).ConfigureAwait(false);
        }
        catch
        {
            await Task.WhenAll(sends.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default))).ConfigureAwait(false);
            throw;
        }
        return new StageStepResult(lossSum, count, clock.Elapsed.TotalMilliseconds - waitMs);
    }

    private static async Task SendThenDispose(Task send, Tensor tensor)
    {
        try
        {
            await send.ConfigureAwait(false);
        }
        finally
        {
            tensor.Dispose();
        }
    }
}
