namespace Dtrain.Models;

/// <summary>Marker for the models the engine trains (language model and classifier).</summary>
public interface IRecurrentModel;
