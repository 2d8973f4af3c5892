"""Write the exercise notebooks: ``seed_walkthrough.ipynb`` (English) and
``seed_walkthrough.ko.ipynb`` (Korean) from the cells below.

The two notebooks run the same code: a code cell is written once, with the Korean of its
comments. Both are committed without outputs; ``tests/test_notebooks.py`` executes
both in a fresh kernel and checks that they are what this script writes. Edit the cells here,
then run::

    python examples/make_notebooks.py

A code cell tagged ``picture`` draws something: executed, it must have at least one
``image/png`` output, and an untagged cell must have none (the test checks both).
"""

from __future__ import annotations

import io
import sys
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

HERE = Path(__file__).resolve().parent
NOTEBOOKS = {"en": HERE / "seed_walkthrough.ipynb", "ko": HERE / "seed_walkthrough.ko.ipynb"}
PICTURE = "picture"
"""The tag of a cell that makes a picture."""


@dataclass(frozen=True)
class Cell:
    """One cell in both languages."""

    kind: str  # "markdown" or "code"
    en: str
    ko: str
    picture: bool = False


def md(en: str, ko: str) -> Cell:
    """A markdown cell, in English and in Korean."""
    return Cell("markdown", en.strip(), ko.strip())


def code(source: str, ko: Mapping[str, str] | None = None, *, picture: bool = False) -> Cell:
    """A code cell, the same in both languages but for its comments: ``ko`` maps the text of an
    English comment to its Korean."""
    source = source.strip()
    return Cell("code", source, translated(source, ko or {}), picture)


def translated(source: str, comments: Mapping[str, str]) -> str:
    """``source`` with each comment whose text is a key of ``comments`` replaced by its value.

    Raises:
        ValueError: a translation whose comment is not in ``source`` (it went stale).
    """
    lines = source.split("\n")
    used = set()
    for token in tokenize.generate_tokens(io.StringIO(source + "\n").readline):
        text = token.string[1:].strip()
        if token.type == tokenize.COMMENT and text in comments:
            row, col = token.start  # a comment runs to the end of its line
            lines[row - 1] = f"{lines[row - 1][:col]}# {comments[text]}"
            used.add(text)
    stale = set(comments) - used
    if stale:
        raise ValueError(f"no comment {sorted(stale)} in the cell {source.splitlines()[0]!r}")
    return "\n".join(lines)


CELLS: list[Cell] = [
    md(
        """
# The VGG-11 visualisation exercise, with cnnviz

This notebook follows the CNN visualisation exercise step by step: look inside VGG-11 to build
an intuition for how a CNN works and learns:

* what the gradient tells us, and how to use it;
* the basic tools for debugging a model;
* how to analyse a pretrained model and reach inside it.

Each step is done first as the exercise does it, by hand in PyTorch, and then with one call of
[cnnviz](../README.md), which also checks the hand-made result. It runs offline on a CPU in about
a minute, on `vgg11_bn` with torchvision's ImageNet weights when they are on disk, otherwise on
`shapes_vgg11`: the same VGG-11 layout (layers `conv1` … `bn5_2`), eight times narrower,
trained by cnnviz on synthetic 64×64 shapes whose exact outlines are known (its first use
trains it, a few minutes on one core; later runs read it from the cache).

cnnviz's results show themselves: a cell that ends in one displays a picture, no `%matplotlib`
needed.
""",
        """
# cnnviz로 따라 하는 VGG-11 시각화 과제

이 노트북은 CNN Visualization 과제를 한 단계씩 그대로 따라갑니다. VGG-11의 내부를 직접 들여다보면서
CNN이 어떻게 동작하고 학습하는지 직관을 얻는 것이 목표입니다.

* gradient가 담고 있는 의미를 이해하고, 분석에 활용하기
* 모델 디버깅에 필요한 기본 방법 익히기
* pretrain된 모델을 분석하고 조작하는 방법 익히기

각 단계는 먼저 과제에서 하던 대로 PyTorch로 직접 구현하고, 이어서 [cnnviz](../README.md) 한 줄로
같은 일을 합니다. 직접 구한 결과가 맞는지도 cnnviz로 확인합니다. 인터넷 없이 CPU에서 1분 정도면
끝까지 실행됩니다. torchvision의 ImageNet 가중치가 디스크에 있으면 `vgg11_bn`을, 없으면
`shapes_vgg11`을 씁니다. `shapes_vgg11`은 과제와 같은 VGG-11 구조(레이어 이름 `conv1` … `bn5_2`)에
채널 수만 8분의 1로 줄인 모델로, 정답 윤곽을 정확히 아는 64×64 합성 도형 이미지로 cnnviz가 학습시킨
것입니다. 처음 쓸 때 한 번 학습하고(CPU 코어 하나로 몇 분), 그다음부터는 캐시에서 바로 읽어 옵니다.

cnnviz의 결과 객체는 스스로 그림으로 표시됩니다. 셀의 마지막 줄에 결과를 두기만 하면 되고,
`%matplotlib` 같은 매직 명령은 필요 없습니다.
""",
    ),
    code(
        """
import functools

import numpy as np
import torch
from PIL import Image

import cnnviz
from cnnviz.errors import WeightsUnavailableError

try:
    model = cnnviz.load_model("vgg11_bn")  # ImageNet weights, if torchvision has them on disk
except WeightsUnavailableError:
    model = cnnviz.load_model("shapes_vgg11")  # offline: trained on first use, then cached
net = model.module  # the plain torch.nn.Module, in eval mode
model
""",
        ko={
            "ImageNet weights, if torchvision has them on disk": (
                "torchvision의 ImageNet 가중치가 디스크에 있을 때"
            ),
            "offline: trained on first use, then cached": (
                "오프라인: 처음 한 번 학습한 뒤 캐시에서 읽음"
            ),
            "the plain torch.nn.Module, in eval mode": "평범한 torch.nn.Module (eval 모드)",
        },
    ),
    md(
        """
## 1. Automatic differentiation in PyTorch

Give a tensor `requires_grad=True` and PyTorch records every operation on it in a
**computational graph**. `backward()` on a scalar result walks that graph backwards and computes
the gradient of the result with respect to every tensor that requires grad; each gradient is
stored in that tensor's `.grad` attribute.
""",
        """
## 1. 파이토치의 자동 미분

Tensor를 `requires_grad=True`로 만들면 파이토치는 그 Tensor에 가해지는 모든 연산을 추적해서
**computational graph**를 만듭니다. 스칼라 결과에서 `backward()`를 호출하면 이 그래프를 거꾸로
따라가며 `requires_grad=True`인 Tensor 각각에 대한 기울기를 계산하고, 그 값을 해당 Tensor의 `.grad`
속성에 저장합니다.
""",
    ),
    code(
        """
w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
v = torch.tensor([4.0, 5.0, 6.0])
y = (w * v).sum() + (w**2).sum()  # y = Σ w·v + Σ w²
print(y, y.grad_fn)  # grad_fn: the last node of the recorded graph
print(w.grad)  # None: nothing has been computed yet
""",
        ko={
            "grad_fn: the last node of the recorded graph": "grad_fn: 기록된 그래프의 마지막 노드",
            "None: nothing has been computed yet": "None: 아직 아무것도 계산하지 않았음",
        },
    ),
    code(
        """
y.backward()  # walk the graph backwards: dy/dw = v + 2w
print(w.grad)
print(torch.equal(w.grad, v + 2 * w.detach()))
""",
        ko={
            "walk the graph backwards: dy/dw = v + 2w": (
                "그래프를 거꾸로 따라가며 계산: dy/dw = v + 2w"
            ),
        },
    ),
    md(
        """
`backward()` *adds* to `.grad` (run the cell again and `w.grad` doubles): that is why a
training loop calls `optimizer.zero_grad()`. Updating the parameters with the gradient is the
optimizer's job, not autograd's.

Below we take gradients of a *model's* class score with respect to its input or an inner layer.
`backward()` would also fill `.grad` of every parameter of the model; `torch.autograd.grad(score,
tensor)` returns just the gradient asked for and leaves the parameters alone. cnnviz uses it,
so a model you are training is left exactly as it was.
""",
        """
`backward()`는 `.grad`에 값을 *더합니다*(위 셀을 한 번 더 실행하면 `w.grad`가 두 배가 됩니다). 학습
루프에서 `optimizer.zero_grad()`를 부르는 이유입니다. 계산된 기울기로 파라미터를 실제로 업데이트하는
일은 autograd가 아니라 optimizer가 따로 맡습니다.

아래에서는 *모델*의 class score를 입력 이미지나 중간 레이어로 미분합니다. 이때 `backward()`를 쓰면
모델의 모든 파라미터의 `.grad`까지 채워집니다. `torch.autograd.grad(score, tensor)`는 요청한
기울기만 돌려주고 파라미터는 건드리지 않습니다. cnnviz도 이 방식을 쓰기 때문에, 학습 중인 모델을
넣어도 원래 상태 그대로 남습니다.
""",
    ),
    md(
        """
## 2. Data: tensors ⇄ NumPy

The exercise defines two helpers that move an image between PyTorch and NumPy, for two reasons:

* **where the data lives.** A tensor may sit in GPU memory and be part of an autograd graph;
  NumPy (and matplotlib, PIL) work only on plain arrays in CPU memory. Hence `.detach()` (leave
  the graph: `.numpy()` refuses a tensor that requires grad) and `.cpu()` (copy from the GPU; on
  the CPU it does nothing).
* **the layout.** PyTorch stores an image channels first, `(C, H, W)`, as convolutions expect;
  NumPy, matplotlib and PIL channels last, `(H, W, C)`. Hence `permute`.
""",
        """
## 2. 데이터 전처리: Tensor ⇄ NumPy

과제에서는 이미지를 PyTorch와 NumPy 사이에서 옮기는 함수 두 개를 정의합니다. 필요한 이유는 두
가지입니다.

* **데이터가 있는 곳.** Tensor는 GPU 메모리에 있을 수 있고 autograd 그래프에 연결되어 있을 수도
  있습니다. NumPy(그리고 matplotlib, PIL)는 CPU 메모리에 있는 평범한 배열만 다룹니다. 그래서
  `.detach()`로 그래프에서 떼어 내고(`requires_grad=True`인 Tensor에는 `.numpy()`를 쓸 수 없습니다),
  `.cpu()`로 GPU에서 CPU로 복사합니다(이미 CPU에 있으면 아무 일도 하지 않습니다).
* **차원 순서.** PyTorch는 이미지를 채널이 앞에 오는 `(C, H, W)`로 저장하고(convolution이 기대하는
  형태), NumPy·matplotlib·PIL은 채널이 뒤에 오는 `(H, W, C)`로 다룹니다. 그래서 `permute`가
  필요합니다.
""",
    ),
    code(
        """
def image_tensor_to_numpy(tensor):
    # (C, H, W) tensor, maybe on the GPU, maybe in a graph → (H, W, C) NumPy array
    return tensor.detach().cpu().permute(1, 2, 0).numpy()


def numpy_to_image_tensor(array, device="cpu"):
    # (H, W, C) NumPy array → (C, H, W) float32 tensor on `device`
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().to(device)
""",
        ko={
            "(C, H, W) tensor, maybe on the GPU, maybe in a graph → (H, W, C) NumPy array": (
                "(C, H, W) Tensor (GPU에 있거나 그래프에 연결되어 있어도 됨) → (H, W, C) NumPy 배열"
            ),
            "(H, W, C) NumPy array → (C, H, W) float32 tensor on `device`": (
                "(H, W, C) NumPy 배열 → `device` 위의 (C, H, W) float32 Tensor"
            ),
        },
    ),
    code(
        """
from cnnviz.data.shapes import SHAPE_CLASSES, heldout_shapes

shapes = heldout_shapes(100)  # 100 held-out 64×64 shapes with their exact masks (§ 7)
INDEX = 2
if model.name == "shapes_vgg11":
    image = image_tensor_to_numpy(shapes.images[INDEX])  # (64, 64, 3), floats in [0, 1]
    print("true class:", SHAPE_CLASSES[shapes.labels[INDEX]])
else:  # the exercise's kind of input: a photo, resized and cropped to 224×224
    from cnnviz.data.samples import bundled_samples
    from cnnviz.inputs.preprocess import resize_and_crop

    photo = Image.open(next(p for p in bundled_samples() if p.name == "coffee.jpg"))
    image = np.asarray(resize_and_crop(photo.convert("RGB"), model.preprocessing)) / 255
print(image.shape, image.dtype)
Image.fromarray((image * 255).round().astype(np.uint8)).resize((224, 224), Image.NEAREST)
""",
        ko={
            "100 held-out 64×64 shapes with their exact masks (§ 7)": (
                "정답 마스크가 있는 64×64 held-out 도형 100장 (7절에서도 사용)"
            ),
            "(64, 64, 3), floats in [0, 1]": "(64, 64, 3), [0, 1] 범위의 실수",
            "the exercise's kind of input: a photo, resized and cropped to 224×224": (
                "과제와 같은 종류의 입력: 사진을 224×224로 resize + crop"
            ),
        },
        picture=True,
    ),
    md(
        """
The model does not take pixels in [0, 1] as they are: each channel is normalised with the mean
and standard deviation the model was trained with, and the image becomes a batch of one,
`(1, 3, H, W)`. The exercise converted the model to float64 (`model.double()`) to match its
NumPy image; here the tensor is made float32, the model's own type. (cnnviz converts whatever it
is given to the model's type, and also takes a path, a PIL image or a NumPy array and does this
preprocessing itself.)
""",
        """
모델은 [0, 1] 범위의 픽셀을 그대로 받지 않습니다. 학습할 때 쓴 평균과 표준편차로 채널마다
정규화하고, 배치 차원을 붙여 `(1, 3, H, W)` 모양으로 만듭니다. 과제에서는 NumPy 이미지(float64)와
타입을 맞추려고 모델을 `model.double()`로 float64로 바꿨는데, 여기서는 반대로 Tensor를 모델의 타입인
float32로 만듭니다. (cnnviz는 입력을 알아서 모델의 타입으로 바꾸고, 파일 경로·PIL 이미지·NumPy
배열을 그대로 받아 이 전처리까지 직접 해 줍니다.)
""",
    ),
    code(
        """
mean = torch.tensor(model.preprocessing.mean).view(3, 1, 1)
std = torch.tensor(model.preprocessing.std).view(3, 1, 1)
x = ((numpy_to_image_tensor(image) - mean) / std)[None]  # a batch of one: (1, 3, H, W)
print(x.shape, x.dtype)
cnnviz.predict(model, x, k=3)
""",
        ko={
            "a batch of one: (1, 3, H, W)": "이미지 한 장짜리 배치: (1, 3, H, W)",
        },
    ),
    md(
        """
## 3. The model

cnnviz builds VGG-11 with the exercise's layer names: `backbone.conv1`, `bn1`, `relu1`,
`pool1`, … `conv5_2`, `bn5_2`, `relu5_2`, `pool5`, then an average pool and the `classifier`.
A layer can be named by its full dotted path or by any unique end of it (`"conv1"`, `"bn4_1"`).
`summarize` runs one forward pass on a zero input and counts the parameters and multiply-adds
of every module.
""",
        """
## 3. 모델 구조

cnnviz의 VGG-11은 과제의 `VGG11Backbone`과 같은 레이어 이름을 씁니다: `backbone.conv1`, `bn1`,
`relu1`, `pool1`, … `conv5_2`, `bn5_2`, `relu5_2`, `pool5`, 그 뒤에 average pooling과 `classifier`.
레이어는 점으로 이어진 전체 경로로 불러도 되고, 겹치지 않는 끝부분만 써도 됩니다(`"conv1"`,
`"bn4_1"`). `summarize`는 0으로 채운 입력으로 forward를 한 번 돌려서 모듈마다 파라미터 수와
연산량(multiply-add 횟수)을 셉니다.
""",
    ),
    code("cnnviz.summarize(model, depth=1)"),
    md(
        """
## 4. Visualising the structure

### 4.1 Counting parameters

The exercise's `get_module_params_num` adds up `numel()` (the product of the shape) of every
parameter tensor of a module. `cnnviz.count_params` gives the same number;
`cnnviz.count_parameters` splits it into trainable and frozen parameters.
""",
        """
## 4. 모델 구조 시각화

### 4.1 파라미터 개수 세기

과제의 `get_module_params_num`은 `module.named_parameters()`로 가져온 파라미터 Tensor마다
`numel()`(shape의 모든 값을 곱한 원소 개수)을 더합니다. `cnnviz.count_params`도 같은 값을 주고,
`cnnviz.count_parameters`는 이를 학습되는(trainable) 파라미터와 고정된(frozen) 파라미터로 나눠
줍니다.
""",
    ),
    code(
        """
def get_module_params_num(module):  # the exercise's function
    param_num = 0
    for _, param in module.named_parameters():
        param_num += param.numel()
    return param_num


for name in ("backbone", "classifier"):
    part = net.get_submodule(name)
    print(f"{name:10} {get_module_params_num(part):>12,} {cnnviz.count_params(part):>12,}")
print(f"count_params(net) = {cnnviz.count_params(net):,}")
print("(trainable, frozen) =", cnnviz.count_parameters(net))
""",
        ko={
            "the exercise's function": "과제의 함수",
        },
    ),
    md(
        """
Why shared tensors count once: one tensor can be used by two modules (tied weights, e.g. a
language model whose input embedding and output layer share one matrix). It is one set of
numbers to learn and store, so it counts once. `named_parameters()` skips duplicates, so the
exercise's function is right for a whole model; the traps are adding up per-module counts, or
counting the entries of `state_dict()`, which lists the shared tensor under each of its names:
""",
        """
공유된 Tensor를 한 번만 세는 이유: 하나의 Tensor를 두 모듈이 같이 쓰는 경우가 있습니다(tied weights.
예를 들어 입력 embedding과 출력 레이어가 같은 행렬을 쓰는 언어 모델). 학습하고 저장해야 하는 숫자는
한 벌뿐이니 한 번만 세야 맞습니다. `named_parameters()`는 중복을 건너뛰기 때문에 모델 전체에
대해서는 과제의 함수도 맞는 값을 줍니다. 함정은 모듈별 개수를 더하거나 `state_dict()`의 항목을 세는
경우입니다. `state_dict()`에는 공유된 Tensor가 이름마다 한 번씩 들어 있습니다.
""",
    ),
    code(
        """
a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
b.weight = a.weight  # tied: one 4×4 tensor used by two layers
tied = torch.nn.Sequential(a, b)
print("count_params:", cnnviz.count_params(tied))  # 16 + 4 + 4
print("per-layer sum:", cnnviz.count_params(a) + cnnviz.count_params(b))  # the 16 twice
print("state_dict:", sum(t.numel() for t in tied.state_dict().values()))  # the 16 twice
""",
        ko={
            "tied: one 4×4 tensor used by two layers": (
                "tied: 4×4 Tensor 하나를 두 레이어가 같이 씀"
            ),
            "the 16 twice": "16을 두 번 셈",
        },
    ),
    md(
        """
### 4.2 conv1's filters

conv1 reads the RGB image, so each of its filters, `(3, 3, 3)`, can be drawn as a tiny RGB
image (each filter stretched to its own range, so weak ones stay visible). The filters of later
layers have tens to hundreds of input channels and no such picture.
""",
        """
### 4.2 conv1 필터 시각화

첫 번째 convolution layer는 RGB 이미지를 입력으로 받기 때문에, `(3, 3, 3)` 모양의 conv1 필터
하나하나를 작은 RGB 이미지로 그릴 수 있습니다(필터마다 자기 값 범위로 늘려서 그리므로 약한 필터도
보입니다). 그 뒤 레이어의 필터는 입력 채널이 수십~수백 개라 이렇게 그릴 수 없습니다.
""",
    ),
    code(
        """
conv1_filters_data = net.backbone.conv1.weight.data  # as in the exercise
print(conv1_filters_data.shape)  # (out channels, in channels = RGB, 3, 3)
cnnviz.filters(model, "conv1")
""",
        ko={
            "as in the exercise": "과제와 같은 방식",
            "(out channels, in channels = RGB, 3, 3)": "(출력 채널, 입력 채널 = RGB, 3, 3)",
        },
        picture=True,
    ),
    md(
        """
### 4.3 Activations, captured with forward hooks

A **forward hook** is a function PyTorch calls right after a module's forward pass, as
`hook(module, input, output)`: it lets us see a layer's output (its activations) without
changing the model. cnnviz does it in one call: hooks on the layers, one forward pass, hooks
removed.
""",
        """
### 4.3 forward hook으로 activation 시각화

**forward hook**은 모듈의 forward가 끝난 직후 파이토치가 `hook(module, input, output)` 형태로 불러
주는 함수입니다. 모델을 고치지 않고도 중간 레이어의 출력(activation)을 꺼내 볼 수 있습니다.
cnnviz로는 한 줄이면 됩니다. 레이어에 hook을 걸고, forward를 한 번 돌리고, hook을 다시 제거합니다.
""",
    ),
    code(
        """
acts = cnnviz.activations(model, x, ["conv1", "bn4_1"])
print({name: tuple(a.shape) for name, a in acts.items()})
acts  # the first 16 channels of each layer
""",
        ko={
            "the first 16 channels of each layer": "레이어마다 앞쪽 16개 채널",
        },
        picture=True,
    ),
    md(
        """
The exercise does it by hand: one hook function, registered on each layer with
`module.register_forward_hook`. Its hook wants the layer's name as well, but PyTorch calls a hook
with exactly three arguments. `functools.partial(show_activations_hook, name)` makes a new
function with the first argument filled in: PyTorch calls it as `f(module, input, output)`, and
it calls `show_activations_hook(name, module, input, output)`.
""",
        """
과제에서는 이것을 직접 구현합니다. hook 함수 하나를 만들어 `module.register_forward_hook`으로
레이어마다 등록합니다. 그런데 이 hook은 레이어 이름도 알아야 하는 반면, 파이토치는 hook을 정확히 세
개의 인자로만 부릅니다. `functools.partial(show_activations_hook, name)`은 첫 번째 인자를 미리 채워
둔 새 함수를 만듭니다. 파이토치가 이 함수를 `f(module, input, output)`으로 부르면, 그 안에서
`show_activations_hook(name, module, input, output)`이 호출됩니다.
""",
    ),
    code(
        """
activation_list = []


def show_activations_hook(name, module, input, output):
    if output.dim() == 4:  # conv/bn/relu outputs: (B, C, H, W)
        activation_list.append(output)  # as in the exercise: the tensor itself
        print(f"hook called: {name} {tuple(output.shape)}")


handles = []
for name in ["conv1", "bn4_1"]:
    hook = functools.partial(show_activations_hook, name)  # name bound now
    handles.append(net.backbone.get_submodule(name).register_forward_hook(hook))
try:
    with torch.no_grad():
        _ = net(x)
finally:
    for handle in handles:
        handle.remove()  # the exercise never removed its hooks
""",
        ko={
            "conv/bn/relu outputs: (B, C, H, W)": "conv/bn/relu 출력: (B, C, H, W)",
            "as in the exercise: the tensor itself": "과제와 같이 Tensor 자체를 저장",
            "name bound now": "지금의 name 값을 묶어 둠",
            "the exercise never removed its hooks": "과제 코드는 hook을 제거하지 않았음",
        },
    ),
    md(
        """
`partial` binds the *value* `name` has at that moment. A
`lambda m, i, o: show_activations_hook(name, m, i, o)` in the loop would look `name` up only
when called, after the loop has ended, so both hooks would say `"bn4_1"`.

Now compare what the hooks stored with cnnviz's tensors:
""",
        """
`partial`은 그 순간의 `name` *값*을 묶어 둡니다. 반복문 안에서
`lambda m, i, o: show_activations_hook(name, m, i, o)`를 쓰면 `name`을 호출될 때(반복문이 이미 끝난
뒤) 찾기 때문에, 두 hook 모두 이름을 `"bn4_1"`로 출력하게 됩니다.

이제 hook이 저장한 값과 cnnviz가 준 Tensor를 비교해 봅시다.
""",
    ),
    code(
        """
for (name, theirs), mine in zip(acts.items(), activation_list, strict=True):
    same = torch.allclose(mine, theirs, atol=1e-5)
    print(f"{name}: hook's min {mine.min():.3f}, cnnviz's min {theirs.min():.3f}, same: {same}")
""",
        ko={},
    ),
    md(
        """
conv1 agrees, but the stored "bn4_1" has no negative values: it is not bn4_1's output. The
hook stored the tensor itself, and the next module, `relu4_1 = nn.ReLU(inplace=True)`, then
overwrote that very tensor in place. A hook should store `output.detach().clone()`; cnnviz's
hooks copy. Two more habits: keep the handle `register_forward_hook` returns and `remove()` it
in a `finally` (the exercise never removed its hooks, so each re-run of its cell added one more
hook to each layer), or let `cnnviz.LayerCapture`, a context manager, own the hooks (§ 6).
""",
        """
conv1은 일치하지만, hook이 저장한 "bn4_1"에는 음수가 하나도 없습니다. bn4_1의 출력이 아니라는
뜻입니다. hook이 Tensor 자체를 저장했는데, 바로 다음 모듈인 `relu4_1 = nn.ReLU(inplace=True)`가 그
Tensor를 제자리에서(in-place) 덮어썼기 때문입니다. hook에서는 `output.detach().clone()`을 저장해야
하고, cnnviz의 hook은 복사본을 저장합니다. 습관 두 가지를 더 들이면 좋습니다.
`register_forward_hook`이 돌려주는 handle을 받아 두었다가 `finally`에서 `remove()`하거나(과제 코드는
hook을 제거하지 않아서 셀을 다시 실행할 때마다 레이어마다 hook이 하나씩 늘어납니다), 컨텍스트
매니저인 `cnnviz.LayerCapture`에 hook 관리를 맡기세요(6절).
""",
    ),
    md(
        r"""
## 5. Saliency map

How much does each pixel contribute to the class score? Take the gradient of the score with
respect to the input image (Simonyan et al., 2014):

$$M_{ij} = \max_c \left| \frac{\partial s_y}{\partial I_{c,ij}} \right|$$

with $s_y$ the score of class $y$ (the *logit*, before softmax) and $I$ the input image.
$\partial s_y / \partial I$ has the image's shape, `(3, H, W)`; the largest absolute value over
the three colour channels gives one number per pixel. This is the exercise's
`compute_gradient_score`:
""",
        r"""
## 5. Saliency map 시각화

각 픽셀이 class score에 얼마나 기여하는지 보려면, score를 입력 이미지로 미분하면 됩니다
(Simonyan et al., 2014).

$$M_{ij} = \max_c \left| \frac{\partial s_y}{\partial I_{c,ij}} \right|$$

$s_y$는 class $y$의 score(softmax를 통과하기 전의 값, 즉 *logit*)이고 $I$는 입력 이미지입니다.
$\partial s_y / \partial I$는 이미지와 같은 `(3, H, W)` 모양이고, 세 색 채널 중 절댓값이 가장 큰
값을 골라 픽셀마다 숫자 하나를 얻습니다. 과제의 `compute_gradient_score`에 해당합니다.
""",
    ),
    code(
        """
image_x = x.clone().requires_grad_(True)  # we want ∂s_y/∂I: track the input
scores = net(image_x)[0]  # logits, one per class
class_idx = int(scores.argmax())  # the predicted class y
s_y = scores[class_idx]
(grad,) = torch.autograd.grad(s_y, image_x)  # image_x.grad of s_y.backward(), params untouched
saliency = grad[0].abs().amax(dim=0)  # (H, W): max |·| over the colour channels
print("predicted:", model.class_names[class_idx], tuple(grad.shape), "→", tuple(saliency.shape))
""",
        ko={
            "we want ∂s_y/∂I: track the input": "∂s_y/∂I를 구해야 하므로 입력을 추적",
            "logits, one per class": "class마다 하나씩인 logit",
            "the predicted class y": "예측한 class y",
            "image_x.grad of s_y.backward(), params untouched": (
                "backward() 후의 image_x.grad (파라미터는 그대로)"
            ),
            "(H, W): max |·| over the colour channels": "(H, W): 색 채널 중 절댓값 최대",
        },
    ),
    code(
        """
sal = cnnviz.explain(model, x, "saliency")  # the predicted class by default
print("same as by hand:", torch.allclose(sal.maps[0, 0], saliency, rtol=1e-4, atol=1e-7))
sal
""",
        ko={
            "the predicted class by default": "기본값: 예측한 class",
        },
        picture=True,
    ),
    md(
        """
Gradients are spiky: a few pixels are much larger than the rest. To keep the map readable,
cnnviz's picture saturates the brightest 2 % of its pixels; the raw map (`sal.maps`) is
unchanged.
""",
        """
gradient 값은 들쭉날쭉해서 몇몇 픽셀만 나머지보다 훨씬 큰 값을 가집니다. 그래서 cnnviz는 그림을 그릴
때 상위 2% 픽셀을 최댓값으로 잘라(clipping) 맵을 읽기 쉽게 만듭니다. 원래 값(`sal.maps`)은
그대로입니다.
""",
    ),
    md(
        r"""
## 6. Grad-CAM

Grad-CAM (Selvaraju et al., 2017) asks the same question of a convolutional layer. With $A^k$
the layer's $k$-th feature map and $y^c$ the score of class $c$:

$$\alpha_k^c = \frac{1}{Z}\sum_{i,j} \frac{\partial y^c}{\partial A^k_{ij}}, \qquad
L^c_{\text{Grad-CAM}} = \mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big)$$

The gradient, global-average-pooled over the map, weights each feature map; the weighted sum is
kept where it is positive and upsampled to the image: one forward and one backward pass, and no
change to the model. The exercise takes it at `bn5_2`, the last convolutional block:
""",
        r"""
## 6. Grad-CAM 시각화

Grad-CAM(Selvaraju et al., 2017)은 같은 질문을 convolution layer에 던집니다. $A^k$를 target layer의
$k$번째 feature map, $y^c$를 class $c$의 score라고 하면

$$\alpha_k^c = \frac{1}{Z}\sum_{i,j} \frac{\partial y^c}{\partial A^k_{ij}}, \qquad
L^c_{\text{Grad-CAM}} = \mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big)$$

gradient를 global average pooling한 $\alpha_k^c$를 가중치로 feature map들의 weighted sum을 구하고,
ReLU로 양수인 부분만 남긴 뒤 이미지 크기로 upsampling합니다. 모델을 바꾸지 않고 forward 한 번,
backward 한 번이면 됩니다. 과제에서는 마지막 convolution block인 `bn5_2`에서 구합니다.
""",
    ),
    code(
        """
cam = cnnviz.explain(model, x, "gradcam", layer="bn5_2")
print(cam.layer, "map", tuple(cam.maps.shape[-2:]))
cam
""",
        picture=True,
    ),
    md(
        """
By hand, as the exercise's `vis_gradcam` does it, with `cnnviz.LayerCapture` owning the hook
(removed when the `with` block ends) and `torch.autograd.grad` instead of a tensor hook and
`backward()`:
""",
        """
과제의 `vis_gradcam`처럼 직접 구해 봅시다. hook 관리는 `cnnviz.LayerCapture`에 맡기고(`with` 블록이
끝나면 제거됩니다), tensor hook과 `backward()` 대신 `torch.autograd.grad`를 씁니다.
""",
    ),
    code(
        """
with cnnviz.LayerCapture(net, ["bn5_2"], grad=cnnviz.GradFrom.LAYERS) as capture:
    out = capture.forward(x)  # the forward hook keeps A, bn5_2's output
    A = capture.activations["backbone.bn5_2"]  # (1, K, h, w)
    (A_grad,) = torch.autograd.grad(out[0, class_idx], A)  # ∂y^c/∂A^k
alpha = A_grad.mean(dim=(2, 3), keepdim=True)  # α_k^c: global average pooling of the gradient
grad_cam = torch.relu((alpha * A).sum(dim=1))[0]  # ReLU(Σ_k α_k^c A^k): (h, w)
print("same as cnnviz:", torch.allclose(grad_cam, cam.maps[0, 0].clamp(min=0), atol=1e-6))
""",
        ko={
            "the forward hook keeps A, bn5_2's output": "forward hook이 bn5_2의 출력 A를 저장",
            "α_k^c: global average pooling of the gradient": (
                "α_k^c: gradient의 global average pooling"
            ),
        },
    ),
    md(
        """
## 7. Why the conv4 block localises better on 64×64 inputs

A Grad-CAM map has its layer's resolution, and VGG-11 halves the resolution at each of its five
pools. At the exercise's 224×224 ImageNet input, bn5_2 is 14×14: fine enough. At a 64×64 input
it is only **4×4**: each cell covers 16×16 pixels, about the size of a whole shape (the objects
cover 4–8 % of the image), and the upsampled map can only be a blob between a few fixed places.
One block earlier, bn4_2 is **8×8** (8-pixel cells) and already sees enough of the image to
tell the shapes apart (its receptive field is 62×62 pixels). The white line is the object's
exact outline:
""",
        """
## 7. 64×64 입력에서는 왜 conv4 block이 위치를 더 잘 짚을까

Grad-CAM 맵의 해상도는 그 레이어의 해상도와 같고, VGG-11은 pooling을 다섯 번 하면서 해상도를 매번
절반으로 줄입니다. 과제의 224×224 ImageNet 입력이라면 bn5_2는 14×14로 충분히 촘촘합니다. 하지만
64×64 입력에서는 **4×4**밖에 되지 않습니다. 한 칸이 16×16 픽셀을 덮어서 도형 하나 크기와
비슷하고(도형은 이미지의 4–8%를 차지합니다), upsampling한 맵은 정해진 몇 군데 사이에 놓인
덩어리밖에 그리지 못합니다. 한 block 앞의 bn4_2는 **8×8**(한 칸에 8픽셀)이고, receptive field가 이미
62×62 픽셀이라 도형을 구분할 만큼 이미지를 충분히 봅니다. 흰 선은 도형의 정확한 윤곽입니다.
""",
    ),
    code(
        """
small = model if model.name == "shapes_vgg11" else cnnviz.load_model("shapes_vgg11")
shape_image = image_tensor_to_numpy(shapes.images[INDEX])  # (64, 64, 3) in [0, 1]
fig, axes = cnnviz.subplots(1, 2)
for ax, layer in zip(axes, ["bn5_2", "bn4_2"], strict=True):
    cam_at = cnnviz.explain(small, shape_image, "gradcam", layer=layer)
    h, w = cam_at.maps.shape[-2:]
    cam_at.plot(ax=ax)
    ax.contour(shapes.masks[INDEX].float().numpy(), levels=[0.5], colors="white")
    ax.set_title(f"{cam_at.layer}: {h}×{w} map", fontsize="small")
    print(f"{cam_at.layer}: {h}×{w} map, one cell = {64 // h}×{64 // w} pixels")
fig
""",
        ko={
            "(64, 64, 3) in [0, 1]": "(64, 64, 3), [0, 1] 범위",
        },
        picture=True,
    ),
    md(
        """
One image proves little. The held-out shapes come with exact masks, so we can count: the
pointing game asks whether the brightest pixel of the map lies on the object (within 4 pixels).
""",
        """
이미지 한 장만 보고 결론을 내리기는 어렵습니다. held-out 도형에는 정확한 마스크가 있으니 직접 세어
봅시다. pointing game은 맵에서 가장 밝은 픽셀이 도형 위(4픽셀 이내)에 있는지를 봅니다.
""",
    ),
    code(
        """
import torch.nn.functional as F

near = F.max_pool2d(shapes.masks[:, None].float(), 9, stride=1, padding=4).flatten(1)  # ±4 px
batch = [image_tensor_to_numpy(t) for t in shapes.images]
for layer in ["bn5_2", "bn4_2"]:
    cams = cnnviz.explain(small, batch, "gradcam", layer=layer)  # each image's predicted class
    peak = cams.upsampled()[:, 0].flatten(1).argmax(dim=1)  # the brightest pixel of each map
    hits = float(near.gather(1, peak[:, None]).mean())
    print(f"{layer}: the peak is on the object in {hits:.0%} of {len(batch)} held-out shapes")
""",
        ko={
            "±4 px": "±4픽셀",
            "each image's predicted class": "이미지마다 예측한 class",
            "the brightest pixel of each map": "맵마다 가장 밝은 픽셀",
        },
    ),
    md(
        """
## 8. What does a channel want to see?

Grad-CAM says where the model looked for one image. Feature visualisation asks the other way
round: start from a grey image and change it, step by step, until one channel of `relu4_2`
fires as hard as it can (Olah et al., Distill 2017). All 8 channels are optimised in one batch.
Under each picture, its checks: how much harder it drives the channel than the best of 200
held-out shapes, and how selective it is (÷ the other channels of the layer).
""",
        """
## 8. 채널은 무엇을 보고 싶어 할까

Grad-CAM은 이미지 한 장에서 모델이 어디를 봤는지 알려 줍니다. feature visualisation은 반대로
묻습니다. 회색 이미지에서 시작해 `relu4_2`의 채널 하나가 가장 세게 반응할 때까지 이미지를 조금씩
바꿉니다(Olah et al., Distill 2017). 8개 채널을 한 batch로 함께 최적화합니다. 그림마다 아래에 검사
결과가 있습니다. held-out 도형 200장 중 가장 센 것보다 채널을 몇 배 세게 움직이는지, 그리고 같은
레이어의 다른 채널보다 얼마나 선택적인지(selectivity)입니다.
""",
    ),
    code(
        """
natural = [image_tensor_to_numpy(t) for t in heldout_shapes(200).images]
units = cnnviz.features(small, "relu4_2", range(8), steps=96, exemplars=natural, stability=False)
units
""",
        picture=True,
    ),
    md(
        """
So on small inputs, take Grad-CAM one block earlier (`layer="bn4_2"`, or the block's output
`relu4_2`); [docs/shapes-benchmark.md](../docs/shapes-benchmark.md) compares every method at
both depths.
""",
        """
그러니 입력이 작을 때는 Grad-CAM을 한 block 앞에서 구하세요(`layer="bn4_2"`, 또는 block의 출력인
`relu4_2`). [docs/shapes-benchmark.md](../docs/shapes-benchmark.md)에 모든 방법을 두 깊이에서 비교한
표가 있습니다.
""",
    ),
    md(
        """
## 9. Ask the next question: the explorer

`cnnviz.explore` starts the explorer of `cnnviz serve` in the background and shows it here: pick
an image, any class, any method and layer, and the map changes at once; the Activations tab shows
any layer's channels and, for one of them, its filter, what it wants to see and where it fires
most. Stop it when you are done.
""",
        """
## 9. 다음 질문은 바로: explorer

`cnnviz.explore`는 `cnnviz serve`의 explorer를 백그라운드에서 띄우고 여기에 보여 줍니다. 이미지와
클래스, 방법, 레이어를 고르면 맵이 바로 바뀝니다. Activations 탭에서는 레이어의 채널들을 보고, 채널
하나를 누르면 그 필터와 그 채널이 보고 싶어 하는 그림, 가장 세게 반응하는 곳이 나옵니다. 다 쓰면
멈추세요.
""",
    ),
    code(
        """
explorer = cnnviz.explore(small)
explorer
"""
    ),
    code("explorer.stop()"),
    md(
        """
## Next

* `cnnviz.method_names()` lists every method; `cnnviz.explain(model, x, "gradcam++")`,
  `"integrated-gradients"`, … work the same way, and every result has `.plot()`, `.save(folder)`
  and `.to_numpy()`.
* On the command line, `cnnviz report photo.jpg --out report/` writes all of this as an HTML
  page per image; `cnnviz evaluate` and `cnnviz sanity` measure how far the maps can be trusted;
  `cnnviz serve` opens the explorer of section 9 on any model.
""",
        """
## 더 해 볼 것

* `cnnviz.method_names()`로 모든 방법을 볼 수 있습니다. `cnnviz.explain(model, x, "gradcam++")`,
  `"integrated-gradients"` 등도 똑같이 쓰고, 모든 결과에 `.plot()`, `.save(folder)`, `.to_numpy()`가
  있습니다.
* 명령줄에서 `cnnviz report photo.jpg --out report/`를 실행하면 이 내용을 이미지마다 HTML 페이지로
  만들어 줍니다. `cnnviz evaluate`와 `cnnviz sanity`로는 맵을 얼마나 믿을 수 있는지 측정합니다.
  `cnnviz serve`는 9절의 explorer를 어떤 모델에서든 엽니다.
""",
    ),
    code("print(cnnviz.method_names())"),
]


def build(language: str) -> Any:
    """The notebook for ``language`` (``"en"`` or ``"ko"``), without outputs."""
    cells = []
    for i, cell in enumerate(CELLS):
        source = cell.en if language == "en" else cell.ko
        if cell.kind == "markdown":
            made = nbformat.v4.new_markdown_cell(source)  # type: ignore[no-untyped-call]  # nbformat leaves it unannotated
        else:
            made = nbformat.v4.new_code_cell(source)  # type: ignore[no-untyped-call]  # nbformat leaves it unannotated
            if cell.picture:
                made.metadata["tags"] = [PICTURE]
        made.id = f"cell-{i:02d}"  # stable ids: the same notebook each time it is written
        cells.append(made)
    notebook = nbformat.v4.new_notebook(cells=cells)  # type: ignore[no-untyped-call]  # nbformat leaves it unannotated
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    notebook.metadata["language_info"] = {"name": "python"}
    nbformat.validate(notebook)
    return notebook


def main(argv: list[str] | None = None) -> int:
    del argv
    for language, path in NOTEBOOKS.items():
        nbformat.write(build(language), path)  # type: ignore[no-untyped-call]  # nbformat leaves it unannotated
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
