namespace Dtrain.Cluster;

/// <summary>A pipeline stage's applied (or skipped) step: its parameters' checksum when asked.</summary>
public sealed record ApplyResult(double ParameterChecksum, bool Skipped);
