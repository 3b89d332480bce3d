"""Model zoo: CIFAR-style networks of the field's benchmark tables, ImageNet architectures, a small CNN."""

from kdlab.models.registry import MODELS, create_model, list_models, stage_names

# Each module registers its architectures on import.
from kdlab.models import cnn, cifar_resnet, wrn, vgg, mobilenetv2, shufflenetv1, shufflenetv2  # noqa: F401,E402
from kdlab.models import resnet, mobilenetv3, efficientnet  # noqa: F401,E402
from kdlab.models import vit, convnext, swin  # noqa: F401,E402
from kdlab.models import external  # noqa: F401,E402  (builds torchvision:NAME and timm:NAME)
from kdlab.models.spec import InputSpec, input_spec_of  # noqa: E402

__all__ = ["MODELS", "InputSpec", "create_model", "input_spec_of", "list_models", "stage_names"]
