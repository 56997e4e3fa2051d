namespace Dtrain.Bench;

/// <summary>placeholder</summary>
public static class ScalingModel
{
    public static int Run(string[] args) => 0;
}
