"""The machinery both training stages and the evaluation share: configuration, checkpoints and the run
directory, the iteration loop, several processes, precision, TensorBoard, pictures and the command-line parser."""
