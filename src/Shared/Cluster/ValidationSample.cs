namespace Dtrain.Cluster;

/// <summary>A classification validation example: its tokens and label.</summary>
public sealed record ValidationSample(int[] Tokens, int Label);
