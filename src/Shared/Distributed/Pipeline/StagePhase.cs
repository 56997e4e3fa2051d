namespace Dtrain.Distributed.Pipeline;

/// <summary>Which tensor of a micro-batch crosses a stage boundary: its activation goes to the next stage, the activation's gradient back to the previous one.</summary>
public enum StagePhase
{
    /// <summary>A stage's output, sent to the next stage (phase 0 on the wire).</summary>
    Activation = 0,

    /// <summary>The gradient of an activation, sent back to the previous stage (phase 1 on the wire).</summary>
    Gradient = 1,
}
